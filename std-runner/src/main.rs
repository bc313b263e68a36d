use clap::error::ErrorKind;
use clap::Parser;

fn main() {
    let cli = match ember_runner::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => {
            // One line on stderr (clap's usage hint would make it several).
            let text = e.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("ember: error: {first} (see ember --help)");
            std::process::exit(2);
        }
    };
    if let Err(e) = ember_runner::cli::main_with(cli) {
        // One line on stderr, non-zero exit.
        let msg = format!("{e:#}").replace('\n', " ");
        eprintln!("ember: error: {msg}");
        std::process::exit(1);
    }
}
