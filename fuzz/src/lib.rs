//! Linked into every fuzz target: an allocator that aborts on any single
//! allocation over [`MAX_ALLOC`], so that unbounded allocation driven by an
//! input is a crash the fuzzer saves, even without a sanitizer (libFuzzer's
//! own `-malloc_limit_mb` needs one; `-rss_limit_mb` still bounds the total).

use std::alloc::{GlobalAlloc, Layout, System};

/// Largest single allocation allowed while fuzzing. The inputs are a few KiB;
/// nothing they drive should come near this.
pub const MAX_ALLOC: usize = 256 * 1024 * 1024;

struct Capped;

fn check(size: usize) {
    if size > MAX_ALLOC {
        // A fixed message: formatting would allocate, here of all places.
        let _ =
            std::io::Write::write_all(&mut std::io::stderr(), b"fuzz: allocation over MAX_ALLOC\n");
        std::process::abort();
    }
}

unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Capped = Capped;
