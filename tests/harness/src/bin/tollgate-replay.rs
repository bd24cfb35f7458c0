//! `tollgate-replay`: replays recorded traffic through tollgate's real filter code, natively or
//! against a live gateway. See `tollgate-replay --help` and `docs/replay.md`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code =
        tollgate_harness::cli::main_with(&args, &mut std::io::stdout(), &mut std::io::stderr());
    std::process::exit(code);
}
