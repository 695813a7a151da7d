//! criterion bench for dedup (to be written)
fn main() {}
