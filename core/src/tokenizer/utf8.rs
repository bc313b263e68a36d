//! Streaming UTF-8 assembly: bytes in, whole characters out.
//!
//! Token pieces are bytes, and a character may be split across tokens. This
//! holds at most three bytes of an unfinished character and emits text as soon
//! as characters complete. Invalid input becomes U+FFFD, one per maximal
//! invalid subpart (the substitution `String::from_utf8_lossy` makes), so the
//! stream gives exactly the text that decoding all bytes at once would.

/// Incremental UTF-8 validator with a three-byte carry.
#[derive(Debug, Clone, Default)]
pub struct Utf8Stream {
    pending: [u8; 4],
    len: u8,
    need: u8,
}

const REPLACEMENT: &str = "\u{FFFD}";

/// Output is gathered here and handed to the sink in `&str` chunks.
struct Out<'s> {
    buf: [u8; 64],
    n: usize,
    sink: &'s mut dyn FnMut(&str),
}

impl Out<'_> {
    fn push(&mut self, bytes: &[u8]) {
        if self.n + bytes.len() > self.buf.len() {
            self.flush();
        }
        self.buf[self.n..self.n + bytes.len()].copy_from_slice(bytes);
        self.n += bytes.len();
    }

    fn flush(&mut self) {
        if self.n > 0 {
            // Only whole, validated characters are ever pushed.
            match core::str::from_utf8(&self.buf[..self.n]) {
                Ok(s) => (self.sink)(s),
                Err(_) => (self.sink)(REPLACEMENT),
            }
            self.n = 0;
        }
    }
}

impl Utf8Stream {
    pub const fn new() -> Self {
        Utf8Stream {
            pending: [0; 4],
            len: 0,
            need: 0,
        }
    }

    /// True while part of a character is held back.
    pub fn has_pending(&self) -> bool {
        self.len > 0
    }

    /// Feeds bytes; `sink` receives every character they complete.
    pub fn push(&mut self, bytes: &[u8], sink: &mut dyn FnMut(&str)) {
        let mut out = Out {
            buf: [0; 64],
            n: 0,
            sink,
        };
        for &b in bytes {
            self.byte(b, &mut out);
        }
        out.flush();
    }

    /// Ends the stream: an unfinished character becomes U+FFFD.
    pub fn finish(&mut self, sink: &mut dyn FnMut(&str)) {
        if self.len > 0 {
            self.len = 0;
            sink(REPLACEMENT);
        }
    }

    fn byte(&mut self, b: u8, out: &mut Out<'_>) {
        if self.len > 0 {
            let lead = self.pending[0];
            let ok = if self.len == 1 {
                match lead {
                    0xE0 => (0xA0..=0xBF).contains(&b),
                    0xED => (0x80..=0x9F).contains(&b),
                    0xF0 => (0x90..=0xBF).contains(&b),
                    0xF4 => (0x80..=0x8F).contains(&b),
                    _ => (0x80..=0xBF).contains(&b),
                }
            } else {
                (0x80..=0xBF).contains(&b)
            };
            if ok {
                self.pending[self.len as usize] = b;
                self.len += 1;
                if self.len == self.need {
                    let n = self.len as usize;
                    let ch = self.pending;
                    self.len = 0;
                    out.push(&ch[..n]);
                }
                return;
            }
            // The held bytes are a maximal invalid subpart; `b` starts afresh.
            self.len = 0;
            out.push(REPLACEMENT.as_bytes());
        }
        let need = match b {
            0x00..=0x7F => {
                out.push(&[b]);
                return;
            }
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => {
                out.push(REPLACEMENT.as_bytes());
                return;
            }
        };
        self.pending[0] = b;
        self.len = 1;
        self.need = need;
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;
    use alloc::string::String;

    fn stream(chunks: &[&[u8]]) -> String {
        let mut s = String::new();
        let mut u = Utf8Stream::new();
        for c in chunks {
            u.push(c, &mut |t| s.push_str(t));
        }
        u.finish(&mut |t| s.push_str(t));
        s
    }

    #[test]
    fn matches_lossy_for_every_split() {
        let cases: &[&[u8]] = &[
            "héllo 😀 中".as_bytes(),
            b"\xf0\x9f\x98",
            b"a\xffb\xc3",
            b"\xe0\x80\x80\xed\xa0\x80\xf4\x90\x80\x80",
            b"\xc3\x28\xe2\x82\x28\xf0\x9f\x98\x28",
            b"\xc0\xc1\xf5\xf8\xfe\xff\x80",
        ];
        for &c in cases {
            let want = String::from_utf8_lossy(c);
            assert_eq!(stream(&[c]), want);
            for i in 0..=c.len() {
                for j in i..=c.len() {
                    assert_eq!(stream(&[&c[..i], &c[i..j], &c[j..]]), want, "{c:?} {i} {j}");
                }
            }
        }
    }
}
