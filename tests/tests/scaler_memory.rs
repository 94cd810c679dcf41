//! The scaler conformance suite against the in-memory scaler.

use std::sync::Arc;

use sss_server::scaler::Scaler;
use sss_server::{MemoryOptions, MemoryScaler};
use sss_tests::conformance::{Backend, Cluster};

struct Memory;

#[async_trait::async_trait]
impl Backend for Memory {
    async fn cluster(&self, instances: usize, history_size: usize) -> Cluster {
        let first = MemoryScaler::new(MemoryOptions {
            history_size,
            ..MemoryOptions::default()
        });
        let handle = Arc::new(first.instance());
        let mut all: Vec<Arc<dyn Scaler>> = vec![Arc::new(first)];
        for _ in 1..instances {
            all.push(Arc::new(handle.instance()));
        }
        Cluster {
            instances: all,
            forget: Box::new(move |channel| {
                let handle = handle.clone();
                Box::pin(async move { handle.reset_channel(&channel) })
            }),
        }
    }
}

async fn backend() -> Memory {
    Memory
}

sss_tests::conformance_tests!(backend());
