//! How deeply a JSON text nests, checked before the envelope parse at nearly no cost.
//!
//! serde_json skips `params` and `result` as raw values without any depth limit, so the
//! limit needs a pass of its own. It is kept off the hot path's bill in two steps:
//! a text with no more opening brackets than the limit (strings included) cannot nest
//! deeper, and counting them runs at vector speed ([`memchr`] for long texts, a
//! vectorised count for short ones); only a text with more brackets than the limit gets
//! the exact scan, which skips string contents eight bytes at a time.

/// Whether `bytes` nests arrays and objects more than `max` levels deep. Brackets inside
/// strings do not count; a backslash in a string escapes the byte after it. Invalid JSON
/// is answered as well as it can be (an unterminated string runs to the end, a stray
/// closing bracket never takes the depth below zero); the parser that follows rejects
/// it anyway.
pub fn exceeds_depth(bytes: &[u8], max: usize) -> bool {
    openings_exceed(bytes, max) && exact_exceeds(bytes, max)
}

/// Texts up to this long are counted in place; longer ones by `memchr`, whose per-hit
/// cost is only worth its speed on long runs without brackets.
const SHORT: usize = 4096;

/// Whether `bytes` holds more than `max` opening brackets, counting those in strings:
/// a necessary condition for nesting deeper than `max`.
fn openings_exceed(bytes: &[u8], max: usize) -> bool {
    if bytes.len() <= max {
        return false;
    }
    if bytes.len() > SHORT {
        return memchr::memchr2_iter(b'{', b'[', bytes).nth(max).is_some();
    }
    // Chunks of 128 bytes summed in `u8` lanes cannot overflow and vectorise well; the
    // tail is padded to a full chunk so that it takes the same path.
    let mut chunks = bytes.chunks_exact(CHUNK);
    let mut total: usize = chunks.by_ref().map(openings_in).sum();
    let tail = chunks.remainder();
    let mut padded = [0u8; CHUNK];
    padded[..tail.len()].copy_from_slice(tail);
    total += openings_in(&padded);
    total > max
}

const CHUNK: usize = 128;

/// Opening brackets in at most 255 bytes. `{` and `[` are the only bytes equal to `{`
/// once bit 5 is set.
fn openings_in(chunk: &[u8]) -> usize {
    chunk
        .iter()
        .fold(0u8, |n, &b| n.wrapping_add(u8::from((b | 0x20) == b'{'))) as usize
}

/// The exact scan: brackets outside strings only.
fn exact_exceeds(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(&b) = bytes.get(at) {
        at += 1;
        match b {
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'"' => at = after_string(bytes, at),
            _ => {}
        }
    }
    false
}

/// The index after the string whose contents start at `at` (past its closing quote), or
/// the length of `bytes` when it is not closed.
fn after_string(bytes: &[u8], mut at: usize) -> usize {
    loop {
        at = next_quote_or_backslash(bytes, at);
        match bytes.get(at) {
            None => return bytes.len(),
            Some(b'"') => return at + 1,
            Some(_) => at += 2, // a backslash escapes the next byte, whatever it is
        }
    }
}

/// The index of the first `"` or `\` at or after `at`, or the length of `bytes`. Eight
/// bytes at a time while in the first few words (most strings are short), then
/// `memchr`.
fn next_quote_or_backslash(bytes: &[u8], mut at: usize) -> usize {
    for _ in 0..4 {
        let Some(word) = bytes.get(at..).and_then(<[u8]>::first_chunk::<8>) else {
            return tail_position(bytes, at);
        };
        let word = u64::from_le_bytes(*word);
        let hits = bytes_equal(word, b'"') | bytes_equal(word, b'\\');
        if hits != 0 {
            return at + (hits.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    let rest = bytes.get(at..).unwrap_or_default();
    memchr::memchr2(b'"', b'\\', rest).map_or(bytes.len(), |i| at + i)
}

fn tail_position(bytes: &[u8], at: usize) -> usize {
    let rest = bytes.get(at..).unwrap_or_default();
    rest.iter()
        .position(|&b| b == b'"' || b == b'\\')
        .map_or(bytes.len(), |i| at + i)
}

const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// The high bit of each byte of `word` that equals `byte`, and no other bit (exact: no
/// false positives from borrows, unlike the shorter `haszero` trick).
fn bytes_equal(word: u64, byte: u8) -> u64 {
    let x = word ^ (u64::from(byte) * 0x0101_0101_0101_0101);
    !(((x & LOW7) + LOW7) | x | LOW7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_search_finds_every_position() {
        for len in 0..40 {
            for hit in 0..len {
                for byte in [b'"', b'\\'] {
                    let mut text = vec![b'a'; len];
                    text[hit] = byte;
                    // Bytes that differ from the target in one bit must not match.
                    if hit + 1 < len {
                        text[hit + 1] = byte ^ 0x80;
                    }
                    for start in 0..=hit {
                        assert_eq!(next_quote_or_backslash(&text, start), hit);
                    }
                }
            }
            assert_eq!(next_quote_or_backslash(&vec![0xa2; len], 0), len);
        }
    }

    #[test]
    fn counting_settles_texts_with_few_brackets() {
        let few = format!(r#"{{"a":"{}"}}"#, "x".repeat(10_000));
        assert!(!openings_exceed(few.as_bytes(), 1));
        let many = "[".repeat(5_000);
        assert!(openings_exceed(many.as_bytes(), 4_999));
        assert!(!openings_exceed(many.as_bytes(), 5_000));
        let short = "{".repeat(200);
        assert!(openings_exceed(short.as_bytes(), 199));
        assert!(!openings_exceed(short.as_bytes(), 200));
    }
}
