//! The merge loop shared by both BPE flavours, over caller scratch memory.
//!
//! Symbols form a doubly linked list over the word; candidate merges of
//! neighbours sit in a binary min-heap keyed by (priority key, left position).
//! A merge absorbs the right symbol into the left, so an entry is stale exactly
//! when its left symbol no longer has the same right neighbour with the same
//! combined length; stale entries are skipped when popped (lazy deletion).
//! Each merge pushes at most two entries, so the heap never holds more than
//! `3n` and a word of `n` symbols costs `O(n log n)`.

use crate::Result;

/// "No token" / "no neighbour".
pub(crate) const NONE: u32 = u32::MAX;

/// Words per heap entry: key, left, right, combined length, merged id.
const ENTRY: usize = 5;
/// Words per symbol: start, len, prev, next, id.
const SYMBOL: usize = 5;

/// One symbol as the priority function sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sym {
    pub start: u32,
    pub len: u32,
    pub id: u32,
}

pub(crate) struct Merger<'s> {
    start: &'s mut [u32],
    len: &'s mut [u32],
    prev: &'s mut [u32],
    next: &'s mut [u32],
    id: &'s mut [u32],
    heap: &'s mut [u32],
    heap_len: usize,
    n: usize,
}

impl<'s> Merger<'s> {
    /// Scratch words for `n` symbols.
    pub fn words(n: usize) -> usize {
        n.saturating_mul(SYMBOL + 3 * ENTRY)
    }

    /// `buf` must hold [`Merger::words`]`(n)` words (callers take exactly that).
    pub fn new(buf: &'s mut [u32], n: usize) -> Self {
        let n = n.min(buf.len() / (SYMBOL + 3 * ENTRY));
        let (start, rest) = buf.split_at_mut(n);
        let (len, rest) = rest.split_at_mut(n);
        let (prev, rest) = rest.split_at_mut(n);
        let (next, rest) = rest.split_at_mut(n);
        let (id, heap) = rest.split_at_mut(n);
        Merger {
            start,
            len,
            prev,
            next,
            id,
            heap,
            heap_len: 0,
            n,
        }
    }

    /// Sets symbol `i` (symbols must be initialised in order `0..n`).
    pub fn init(&mut self, i: usize, start: u32, len: u32, id: u32) {
        if i >= self.n {
            return;
        }
        self.start[i] = start;
        self.len[i] = len;
        self.id[i] = id;
        self.prev[i] = if i == 0 { NONE } else { i as u32 - 1 };
        self.next[i] = if i + 1 < self.n { i as u32 + 1 } else { NONE };
    }

    fn sym(&self, i: u32) -> Sym {
        let i = i as usize;
        Sym {
            start: self.start[i],
            len: self.len[i],
            id: self.id[i],
        }
    }

    /// Merges until no neighbouring pair has a priority. `pair` gives a pair's
    /// (key, merged id), lower keys first, or `None` if the pair cannot merge.
    pub fn run(&mut self, pair: &mut dyn FnMut(Sym, Sym) -> Option<(u32, u32)>) {
        for i in 1..self.n as u32 {
            self.offer(i - 1, i, pair);
        }
        while let Some([_, l, r, size, merged]) = self.pop() {
            let (lu, ru) = (l as usize, r as usize);
            if self.len[lu] == 0
                || self.len[ru] == 0
                || self.next[lu] != r
                || self.len[lu] + self.len[ru] != size
            {
                continue;
            }
            self.len[lu] = size;
            self.id[lu] = merged;
            self.len[ru] = 0;
            let after = self.next[ru];
            self.next[lu] = after;
            if after != NONE {
                self.prev[after as usize] = l;
            }
            let before = self.prev[lu];
            if before != NONE {
                self.offer(before, l, pair);
            }
            if after != NONE {
                self.offer(l, after, pair);
            }
        }
    }

    /// Calls `f(start, len, id)` for each remaining symbol in order.
    pub fn for_each(&self, f: &mut dyn FnMut(u32, u32, u32) -> Result<()>) -> Result<()> {
        let mut i = if self.n == 0 { NONE } else { 0 };
        while i != NONE {
            let s = self.sym(i);
            f(s.start, s.len, s.id)?;
            i = self.next[i as usize];
        }
        Ok(())
    }

    fn offer(&mut self, l: u32, r: u32, pair: &mut dyn FnMut(Sym, Sym) -> Option<(u32, u32)>) {
        let (a, b) = (self.sym(l), self.sym(r));
        if let Some((key, merged)) = pair(a, b) {
            self.push([key, l, r, a.len + b.len, merged]);
        }
    }

    fn less(&self, i: usize, j: usize) -> bool {
        let (a, b) = (&self.heap[i * ENTRY..], &self.heap[j * ENTRY..]);
        (a[0], a[1]) < (b[0], b[1])
    }

    fn swap(&mut self, i: usize, j: usize) {
        for k in 0..ENTRY {
            self.heap.swap(i * ENTRY + k, j * ENTRY + k);
        }
    }

    fn push(&mut self, e: [u32; ENTRY]) {
        let cap = self.heap.len() / ENTRY;
        if self.heap_len >= cap {
            // Cannot happen (at most 3n live entries); dropping a candidate
            // would only leave a pair unmerged.
            debug_assert!(false, "merge heap overflow");
            return;
        }
        let mut i = self.heap_len;
        self.heap[i * ENTRY..(i + 1) * ENTRY].copy_from_slice(&e);
        self.heap_len += 1;
        while i > 0 {
            let parent = (i - 1) / 2;
            if !self.less(i, parent) {
                break;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    fn pop(&mut self) -> Option<[u32; ENTRY]> {
        if self.heap_len == 0 {
            return None;
        }
        let mut top = [0u32; ENTRY];
        top.copy_from_slice(&self.heap[..ENTRY]);
        self.heap_len -= 1;
        let last = self.heap_len;
        if last > 0 {
            self.swap(0, last);
            let mut i = 0;
            loop {
                let (l, r) = (2 * i + 1, 2 * i + 2);
                let mut m = i;
                if l < last && self.less(l, m) {
                    m = l;
                }
                if r < last && self.less(r, m) {
                    m = r;
                }
                if m == i {
                    break;
                }
                self.swap(i, m);
                i = m;
            }
        }
        Some(top)
    }
}
