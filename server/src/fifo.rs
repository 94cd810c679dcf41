//! A FIFO queue for what one event makes a socket do.

use std::collections::VecDeque;

/// A FIFO queue that holds its first item inline and allocates only for more, and gives that
/// memory back once drained.
///
/// Most events make a socket do one thing (a publication: one frame to send). A `VecDeque`
/// emptied and freed after each event cost an allocation and a free per delivery, twice (the
/// state machine's commands, then the frames to write): about 300 of the 5 300 instructions
/// the server spent per delivery (callgrind, `sss-bench fanout`). Keeping the `VecDeque`'s
/// buffer instead would cost every idle socket ~290 bytes.
#[derive(Debug)]
pub(crate) struct Fifo<T> {
    /// The oldest item, unless `rest` holds older ones: an item goes here only when the queue
    /// is empty.
    first: Option<T>,
    rest: VecDeque<T>,
}

impl<T> Default for Fifo<T> {
    fn default() -> Self {
        Self {
            first: None,
            rest: VecDeque::new(),
        }
    }
}

impl<T> Fifo<T> {
    /// Queues `item` last.
    pub(crate) fn push(&mut self, item: T) {
        if self.is_empty() {
            self.first = Some(item);
        } else {
            self.rest.push_back(item);
        }
    }

    /// The oldest item.
    pub(crate) fn pop(&mut self) -> Option<T> {
        if let Some(item) = self.first.take() {
            return Some(item);
        }
        let item = self.rest.pop_front();
        if self.rest.is_empty() && self.rest.capacity() > 0 {
            self.rest = VecDeque::new();
        }
        item
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none() && self.rest.is_empty()
    }

    /// The oldest item, left queued.
    pub(crate) fn front(&self) -> Option<&T> {
        self.first.as_ref().or_else(|| self.rest.front())
    }

    /// The items, oldest first, left queued.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.first.iter().chain(self.rest.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_in_first_out_whatever_the_interleaving() {
        let mut q = Fifo::default();
        let mut model = VecDeque::new();
        // Pushes and pops interleaved in every pattern of 12 steps (1 = push).
        for pattern in 0u32..(1 << 12) {
            for step in 0..12 {
                if pattern & (1 << step) != 0 {
                    q.push(step);
                    model.push_back(step);
                } else {
                    assert_eq!(q.pop(), model.pop_front(), "pattern {pattern:012b}");
                }
                assert_eq!(q.is_empty(), model.is_empty());
                assert_eq!(q.front(), model.front());
                assert!(q.iter().eq(model.iter()), "pattern {pattern:012b}");
            }
            while let Some(x) = model.pop_front() {
                assert_eq!(q.pop(), Some(x));
            }
            assert_eq!(q.pop(), None);
        }
    }

    #[test]
    fn one_item_allocates_nothing_and_a_drained_queue_keeps_nothing() {
        let mut q = Fifo::default();
        q.push(1);
        assert_eq!(q.rest.capacity(), 0);
        assert_eq!(q.pop(), Some(1));
        for i in 0..10 {
            q.push(i);
        }
        assert!(q.rest.capacity() > 0);
        while q.pop().is_some() {}
        assert_eq!(q.rest.capacity(), 0);
    }
}
