//! Protocol detection from the first bytes, and HTTP/2 frame boundaries.
//!
//! Detection decides only when it can: a byte that differs from the HTTP/2
//! preface makes the connection HTTP/1; the whole 24-byte preface makes it
//! HTTP/2; anything shorter (a lone `P`, which begins `POST`, `PUT` and
//! `PATCH` as well as `PRI`) leaves it undecided, and the driver times an
//! undecided connection like a half-sent HTTP/1 head. This is the same rule
//! hyper-util's `auto` builder applies to the same bytes, so both always
//! agree.

/// The HTTP/2 client connection preface (RFC 9113, section 3.4).
pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Where detection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detect {
    /// The bytes so far (`matched` of them) are a prefix of the preface.
    Undecided { matched: u8 },
    /// HTTP/1.
    Http1,
    /// HTTP/2; the frame tracker follows the bytes after the preface.
    Http2(Frames),
}

/// What one step of detection found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decided {
    /// Still undecided after these bytes.
    Not,
    /// HTTP/1 from these bytes on.
    Http1,
    /// HTTP/2; the preface ended `rest` bytes before the end of the input.
    Http2 { rest: usize },
}

impl Detect {
    pub(crate) const fn new() -> Self {
        Detect::Undecided { matched: 0 }
    }

    /// Feed the next bytes read (not empty) to an undecided detector.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Decided {
        let Detect::Undecided { matched } = self else {
            return Decided::Not;
        };
        let m = usize::from(*matched);
        let take = bytes.len().min(PREFACE.len() - m);
        if bytes[..take] != PREFACE[m..m + take] {
            *self = Detect::Http1;
            return Decided::Http1;
        }
        if m + take == PREFACE.len() {
            let mut frames = Frames::default();
            let _ = frames.advance(&bytes[take..]);
            *self = Detect::Http2(frames);
            return Decided::Http2 {
                rest: bytes.len() - take,
            };
        }
        // `m + take < 24`: fits.
        *matched = (m + take) as u8;
        Decided::Not
    }
}

/// Follows HTTP/2 frame boundaries in the bytes the client sends, by frame
/// length alone (nine-byte headers, a 24-bit length): enough to know when
/// the stream sits between two frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Frames {
    /// Bytes of the current frame header seen so far (0..9).
    head: u8,
    /// The length being read from the current header.
    len: u32,
    /// The type and flags of the current header.
    kind: u8,
    flags: u8,
    /// Payload bytes of the current frame still to come.
    skip: u32,
}

const PING: u8 = 0x6;
const ACK: u8 = 0x1;

impl Frames {
    /// Follow `bytes`, the next ones the client sent. Returns how many PING
    /// acknowledgements they completed.
    pub(crate) fn advance(&mut self, mut bytes: &[u8]) -> u32 {
        let mut acks = 0;
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = bytes.len().min(self.skip as usize);
                bytes = &bytes[n..];
                self.skip -= n as u32;
                continue;
            }
            if self.head == 0 && bytes.len() >= 9 {
                // A whole header at once: the usual case, at the cost of a
                // few loads (byte by byte it was a tenth of lameduck's
                // instructions per HTTP/2 request).
                self.skip = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]);
                if bytes[3] == PING && bytes[4] & ACK != 0 {
                    acks += 1;
                }
                bytes = &bytes[9..];
                continue;
            }
            if self.head < 3 {
                self.len = (self.len << 8) | u32::from(bytes[0]);
                self.head += 1;
                bytes = &bytes[1..];
                continue;
            }
            match self.head {
                3 => self.kind = bytes[0],
                4 => self.flags = bytes[0],
                _ => {}
            }
            if self.head < 5 {
                self.head += 1;
                bytes = &bytes[1..];
                continue;
            }
            let n = bytes.len().min(usize::from(9 - self.head));
            bytes = &bytes[n..];
            self.head += n as u8;
            if self.head == 9 {
                if self.kind == PING && self.flags & ACK != 0 {
                    acks += 1;
                }
                self.skip = self.len;
                self.head = 0;
                self.len = 0;
            }
        }
        acks
    }

    /// Whether every byte so far belongs to a complete frame.
    pub(crate) fn at_boundary(&self) -> bool {
        self.head == 0 && self.skip == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_proper_prefix_of_the_preface_leaves_it_undecided() {
        for n in 1..PREFACE.len() {
            let mut d = Detect::new();
            assert_eq!(d.feed(&PREFACE[..n]), Decided::Not, "{n} bytes");
            assert_eq!(d, Detect::Undecided { matched: n as u8 });
        }
    }

    #[test]
    fn the_preface_byte_by_byte_decides_http2_at_the_last_byte() {
        let mut d = Detect::new();
        for (i, b) in PREFACE.iter().enumerate() {
            let got = d.feed(&[*b]);
            if i + 1 < PREFACE.len() {
                assert_eq!(got, Decided::Not, "byte {i}");
            } else {
                assert_eq!(got, Decided::Http2 { rest: 0 });
            }
        }
        assert!(matches!(d, Detect::Http2(f) if f.at_boundary()));
    }

    #[test]
    fn post_put_patch_byte_by_byte_are_http1_at_their_first_differing_byte() {
        // `P` matches; the second byte decides for POST, PUT and PATCH.
        for head in ["POST / HTTP/1.1\r\n", "PUT /", "PATCH /x"] {
            let mut d = Detect::new();
            assert_eq!(d.feed(b"P"), Decided::Not, "{head}");
            assert_eq!(d.feed(&head.as_bytes()[1..2]), Decided::Http1, "{head}");
            assert_eq!(d, Detect::Http1);
        }
        // `PR` still matches `PRI`; `PRX` does not.
        let mut d = Detect::new();
        assert_eq!(d.feed(b"PR"), Decided::Not);
        assert_eq!(d.feed(b"X"), Decided::Http1);
    }

    #[test]
    fn get_is_http1_at_once_and_bytes_after_a_decision_are_ignored() {
        let mut d = Detect::new();
        assert_eq!(d.feed(b"GET / HTTP/1.1\r\n"), Decided::Http1);
        assert_eq!(d.feed(PREFACE), Decided::Not);
        assert_eq!(d, Detect::Http1);
    }

    #[test]
    fn preface_followed_by_frames_in_one_read() {
        let mut bytes = PREFACE.to_vec();
        // SETTINGS, 6 bytes of payload, then half of a PING header.
        bytes.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]);
        bytes.extend_from_slice(&[0, 0, 8, 6]);
        let mut d = Detect::new();
        assert_eq!(d.feed(&bytes), Decided::Http2 { rest: 19 });
        let Detect::Http2(f) = d else { panic!() };
        assert!(!f.at_boundary());
    }

    #[test]
    fn frame_boundaries_byte_by_byte_and_in_one_piece() {
        let ping = [0u8, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        let empty_settings = [0u8, 0, 0, 4, 1, 0, 0, 0, 0];
        let mut f = Frames::default();
        for (i, b) in ping.iter().enumerate() {
            assert_eq!(f.advance(&[*b]), 0, "not an ACK");
            assert_eq!(f.at_boundary(), i + 1 == ping.len(), "after byte {i}");
        }
        let mut ack = ping;
        ack[4] = 1;
        assert_eq!(f.advance(&ack[..9]), 1, "counted with its header");
        assert_eq!(f.advance(&ack[9..]), 0);
        assert_eq!(f.advance(&[ack, ack].concat()), 2);
        for (i, b) in empty_settings.iter().enumerate() {
            f.advance(&[*b]);
            assert_eq!(
                f.at_boundary(),
                i + 1 == empty_settings.len(),
                "after byte {i}"
            );
        }
        let mut both = ping.to_vec();
        both.extend_from_slice(&empty_settings);
        f.advance(&both);
        assert!(f.at_boundary());
        // A 70000-byte frame (a 24-bit length above 16 bits).
        f.advance(&[0x01, 0x11, 0x70, 0, 0, 0, 0, 0, 1]);
        assert!(!f.at_boundary());
        f.advance(&vec![0u8; 70_000 - 1]);
        assert!(!f.at_boundary());
        f.advance(&[0]);
        assert!(f.at_boundary());
    }
}
