//! mimalloc as the global allocator of every binary that links mesh-lib, with the `mimalloc`
//! feature (`cargo build --release --features mesh-lib/mimalloc`). A request through the mesh
//! allocates and frees many small, short-lived buffers (headers, labels, span fields, body
//! chunks) on every hop: under glibc's malloc those calls are about a quarter of a meshed
//! page's instructions, under mimalloc a third of that, and the page's CPU drops by about a
//! quarter. The price is memory: about 1 MiB more resident per process at idle, which would
//! put productpage and the sidecars above the 10 MiB they are held to, so it is off by
//! default. Transparent huge pages stay off (`no_thp`): with them each process starts 15 MiB
//! larger. `bench/README.md` has the figures.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
