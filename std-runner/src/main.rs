use clap::Parser;

fn main() {
    let cli = ember_runner::cli::Cli::parse();
    if let Err(e) = ember_runner::cli::main_with(cli) {
        // One line on stderr, non-zero exit.
        let msg = format!("{e:#}").replace('\n', " ");
        eprintln!("ember: error: {msg}");
        std::process::exit(1);
    }
}
