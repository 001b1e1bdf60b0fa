//! Shared by the hello targets: the input's first bytes choose the chunking.
//!
//! Layout: byte 0 = `k` (low 4 bits: how many chunk-size bytes follow; bit 7: use a small
//! size limit), then `k` chunk sizes (each byte + 1, cycled), then the stream. With no
//! chunk sizes the stream is pushed one byte at a time.

/// The chunk sizes, whether to use a small limit, and the stream.
pub fn split(data: &[u8]) -> Option<(Vec<usize>, bool, &[u8])> {
    let (&k, rest) = data.split_first()?;
    let n = usize::from(k & 0x0f).min(rest.len());
    let (sizes, stream) = rest.split_at(n);
    let mut sizes: Vec<usize> = sizes.iter().map(|&b| usize::from(b) + 1).collect();
    if sizes.is_empty() {
        sizes.push(1);
    }
    Some((sizes, k & 0x80 != 0, stream))
}

/// `stream` cut into chunks of the given sizes, cycled.
pub fn chunks<'a>(stream: &'a [u8], sizes: &'a [usize]) -> impl Iterator<Item = &'a [u8]> {
    let mut at = 0;
    sizes.iter().cycle().map_while(move |&size| {
        if at >= stream.len() {
            return None;
        }
        let end = (at + size).min(stream.len());
        let chunk = &stream[at..end];
        at = end;
        Some(chunk)
    })
}
