//! criterion bench for derange (to be written)
fn main() {}
