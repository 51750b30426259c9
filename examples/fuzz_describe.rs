//! Prints what a fuzz input means (the decoded structure the harness runs):
//! `cargo run --example fuzz_describe -- ring fuzz/artifacts/ring/crash-...`
//! (target `ring` or `batch`).

#[path = "../tests/fuzz_harness/mod.rs"]
mod fuzz_harness;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [target, path] = args.as_slice() else {
        eprintln!("usage: fuzz_describe ring|batch INPUT");
        std::process::exit(2);
    };
    match std::fs::read(path) {
        Ok(data) => println!("{}", fuzz_harness::describe(target, &data)),
        Err(e) => {
            eprintln!("fuzz_describe: {path}: {e}");
            std::process::exit(1);
        }
    }
}
