//! The `gatehouse` command: parse the command line and hand over to the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    gatehouse::cli::main()
}
