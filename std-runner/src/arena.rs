//! Zeroed f32 buffers for memory plans, allocated so that a size the
//! machine cannot give is an error, not an abort.
//!
//! `vec![0.0; n]` aborts the process when the allocation fails. A KV cache
//! sized from `--ctx`, `--parallel` or a model file can ask for more than
//! the machine (or `ulimit -v`) allows, and that must be a one-line error.
//! The memory comes from the allocator's zeroed path (calloc: fresh pages
//! from the OS are already zero), so a large cache costs nothing until
//! tokens arrive.

use anyhow::{bail, Result};

/// A zeroed buffer of `n` floats; an error naming `what` and the size if
/// the allocator refuses.
pub fn zeroed(n: usize, what: &str) -> Result<Vec<f32>> {
    let bytes = n.checked_mul(4).filter(|&b| b <= isize::MAX as usize);
    let Some(bytes) = bytes else {
        bail!("{what}: {n} floats is more memory than any machine has");
    };
    if n == 0 {
        return Ok(Vec::new());
    }
    let layout = match std::alloc::Layout::array::<f32>(n) {
        Ok(l) => l,
        Err(_) => bail!("{what}: {n} floats is more memory than any machine has"),
    };
    // SAFETY: the layout has a non-zero size (n > 0 checked above).
    let p = unsafe { std::alloc::alloc_zeroed(layout) } as *mut f32;
    if p.is_null() {
        bail!(
            "{what} needs {:.1} MiB, which this machine (or its memory limit) cannot give; \
             lower --ctx, --parallel or --batch",
            bytes as f64 / (1 << 20) as f64
        );
    }
    // SAFETY: `p` was allocated by the global allocator with the layout of
    // [f32; n], is non-null, and holds n zeroed (valid) floats; the Vec
    // takes ownership with length and capacity n, as that layout requires.
    Ok(unsafe { Vec::from_raw_parts(p, n, n) })
}

#[cfg(test)]
mod tests {
    #[test]
    fn refuses_what_cannot_exist_and_zeroes_the_rest() {
        assert!(super::zeroed(usize::MAX / 2, "x").is_err());
        assert!(super::zeroed(1 << 62, "x").is_err());
        let v = super::zeroed(1000, "x").unwrap();
        assert_eq!(v.len(), 1000);
        assert!(v.iter().all(|&x| x == 0.0));
        assert!(super::zeroed(0, "x").unwrap().is_empty());
    }
}
