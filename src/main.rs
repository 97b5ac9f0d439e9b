//! The `sessbackup` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    sessbackup::cli::main()
}
