//! The `ward` binary: parses the command line and hands over to [`ward::cli`].

fn main() -> std::process::ExitCode {
    ward::cli::main()
}
