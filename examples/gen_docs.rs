//! Writes the man pages and shell completions of `cenallocd` and
//! `cenallocctl`, generated from their clap definitions (the Debian
//! package ships them: debian/rules runs this):
//!
//! ```text
//! cargo run --example gen_docs -- OUT_DIR
//! ```
//! OUT_DIR/man/{cenallocd,cenallocctl,cenallocctl-SUBCOMMAND}.1,
//! OUT_DIR/completions/bash/{cenallocd,cenallocctl},
//! OUT_DIR/completions/zsh/_{cenallocd,cenallocctl},
//! OUT_DIR/completions/fish/{cenallocd,cenallocctl}.fish.

use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

fn write_all(out: &Path) -> io::Result<()> {
    let commands = [
        cenalloc::config::Args::command(),
        cenalloc::control::cli::Args::command(),
    ];
    let man_dir = out.join("man");
    fs::create_dir_all(&man_dir)?;
    for command in commands {
        let name = command.get_name().to_string();
        // One page per command and per subcommand (cenallocctl-vms.1, ...),
        // which the main page lists.
        clap_mangen::generate_to(command.clone(), &man_dir)?;
        for (shell, dir, file) in [
            (Shell::Bash, "bash", name.clone()),
            (Shell::Zsh, "zsh", format!("_{name}")),
            (Shell::Fish, "fish", format!("{name}.fish")),
        ] {
            let dir = out.join("completions").join(dir);
            fs::create_dir_all(&dir)?;
            let mut script = File::create(dir.join(file))?;
            clap_complete::generate(shell, &mut command.clone(), name.clone(), &mut script);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out] = args.as_slice() else {
        eprintln!("usage: gen_docs OUT_DIR");
        return ExitCode::from(2);
    };
    match write_all(Path::new(out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen_docs: {out}: {e}");
            ExitCode::FAILURE
        }
    }
}
