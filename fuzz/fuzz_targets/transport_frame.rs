#![no_main]
//! Fuzzes the peer transport's frame decoder: a byte stream from an
//! untrusted connection, fed in arbitrary pieces, yields frames or a typed
//! error, never a panic or an allocation beyond the frame bound.

use calm_transport::{FrameDecoder, encode_frame};
use libfuzzer_sys::fuzz_target;

const FRAME_BYTES_MAX: u32 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses where the stream is split, to exercise
    // incremental decoding.
    let Some((&split, stream)) = data.split_first() else { return };
    let at = (split as usize).min(stream.len());
    let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
    for piece in [&stream[..at], &stream[at..]] {
        decoder.extend(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    // Whatever decodes re-encodes within the same bound.
                    let mut out = Vec::new();
                    encode_frame(&frame, FRAME_BYTES_MAX, &mut out)
                        .expect("a decoded frame re-encodes");
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
