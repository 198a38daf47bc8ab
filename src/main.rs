//! The `ward` binary: parses the command line and hands over to `ward::cli`.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
