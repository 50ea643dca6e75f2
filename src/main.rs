//! The `handover` binary: parse the command line, hand over to [`handover::app`], map the
//! result to an exit code.
use clap::Parser;

fn main() {
    let cli = handover::cli::Cli::parse();
    std::process::exit(handover::app::main(cli));
}
