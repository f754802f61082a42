//! Criterion benchmarks of the stack's hot path live in `benches/hot_path.rs`
//! (`cargo bench`); the end-to-end benchmark is `cargo xtask bench`.
