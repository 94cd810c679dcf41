//! The sans-IO client state machine (being written).
