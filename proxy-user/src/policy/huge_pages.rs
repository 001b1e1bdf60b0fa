//! Large lookup arrays on transparent huge pages. Lookups hit random entries, and with
//! 4 KiB pages each one would also miss the TLB and walk the page tables.

/// Below this, an array spans few pages and is left alone.
const MIN_BYTES: usize = 4 << 20;

/// `len` copies of `value`, on huge pages if large.
pub fn filled<T: Clone>(len: usize, value: T) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    advise(&v);
    v.resize(len, value);
    v
}

/// A copy of `items`, on huge pages if large, without spare capacity.
pub fn copy<T: Copy>(items: &[T]) -> Vec<T> {
    let mut v = Vec::with_capacity(items.len());
    advise(&v);
    v.extend_from_slice(items);
    v
}

/// Asks for huge pages for `v`'s whole capacity, before anything is written to it.
fn advise<T>(v: &Vec<T>) {
    let bytes = v.capacity() * size_of::<T>();
    if bytes < MIN_BYTES {
        return;
    }
    // madvise wants a page-aligned start; malloc's large blocks start just past a header.
    let start = v.as_ptr() as usize;
    let aligned = start.next_multiple_of(4096);
    // SAFETY: the range lies inside the vector's own allocation, and MADV_HUGEPAGE only
    // changes how the kernel backs it, not its contents or validity. Failure (THP
    // disabled) is harmless and ignored.
    unsafe {
        libc::madvise(
            aligned as *mut libc::c_void,
            start + bytes - aligned,
            libc::MADV_HUGEPAGE,
        );
    }
}
