//! The `calm` binary: `calm node` runs a server, `calm dev` a local
//! cluster, and the client commands (`calm counter`, `calm set`,
//! `calm register`, `calm map`, `calm bcounter`, `calm members`,
//! `calm status`) talk to a cluster through `calm-client`, like etcdctl;
//! `calm bench` (in `calm-bench`) loads one.

mod cli;
mod dev;
mod node;

use std::process::ExitCode;

use clap::Parser;

/// calm: a data store where every operation says how much coordination it
/// pays for.
#[derive(Debug, clap::Parser)]
#[command(name = "calm", version)]
struct Cli {
    #[command(flatten)]
    global: cli::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Every subcommand of `calm`.
// Built once per process and matched at once: the size of its largest
// variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Runs one calm node until SIGTERM or Ctrl-C.
    Node(node::NodeCommand),
    /// Runs a local cluster of nodes on loopback.
    Dev(dev::DevCommand),
    #[command(flatten)]
    Client(cli::ClientCommand),
    // Its help, long and short, is `BenchArgs`' own documentation.
    Bench(BenchCommand),
}

// `calm bench --workload ...` runs one bench; `calm bench usl ...` a sweep
// with a scalability fit. No doc comment: the help stays `BenchArgs`'.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct BenchCommand {
    #[command(subcommand)]
    mode: Option<BenchMode>,
    #[command(flatten)]
    args: Option<calm_bench::BenchArgs>,
}

/// `calm bench`'s modes besides the single run.
#[derive(Debug, clap::Subcommand)]
enum BenchMode {
    Usl(calm_bench::UslArgs),
    /// A write and a read workload at every level, one after the other, and
    /// the coordination tax of each: level | ops/s | p50 | p99 | msgs/op |
    /// RTTs/op | fsyncs/op. List every node in --endpoints.
    Tax(calm_bench::TaxArgs),
}

fn main() -> ExitCode {
    let Cli { global, command } = Cli::parse();
    match command {
        Command::Node(command) => node::run(command),
        Command::Dev(command) => dev::run(command),
        Command::Client(command) => cli::run(&global, command),
        Command::Bench(BenchCommand { mode, args }) => {
            let target = calm_bench::Target {
                endpoints: global.endpoints,
                level: global.level.into(),
                request_timeout: global.command_timeout,
            };
            let format = match global.write_out {
                cli::Format::Table => calm_bench::Format::Table,
                cli::Format::Json => calm_bench::Format::Json,
            };
            match (mode, args) {
                (Some(BenchMode::Usl(args)), _) => calm_bench::run_usl(args, target, format),
                (Some(BenchMode::Tax(args)), _) => calm_bench::run_tax(args, target, format),
                (None, Some(args)) => calm_bench::run(args, target, format),
                // clap requires `--workload` when no mode is named.
                (None, None) => {
                    eprintln!("Error: calm bench needs --workload, or a mode such as `usl`");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::CommandFactory;
    use clap::error::ErrorKind;

    use super::*;
    use cli::args::LevelArg;
    use cli::{BoundedCounterCommand, ClientCommand, CounterCommand, Format, MapCommand};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("calm").chain(args.iter().copied()))
    }

    fn parsed(args: &[&str]) -> Cli {
        parse(args).unwrap_or_else(|error| panic!("{args:?} should parse: {error}"))
    }

    fn refused(args: &[&str]) -> ErrorKind {
        match parse(args) {
            Ok(cli) => panic!("{args:?} should be refused, parsed {cli:?}"),
            Err(error) => error.kind(),
        }
    }

    #[test]
    fn the_command_definition_is_consistent() {
        // Catches clashing flag names between the global flags and any
        // subcommand's, which clap only reports at runtime.
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_parse_before_or_after_the_subcommand() {
        let args = [
            "--endpoints",
            "a:1,b:2",
            "-w",
            "json",
            "--command-timeout",
            "250ms",
            "--level",
            "quorum",
        ];
        let before: Vec<&str> = args
            .iter()
            .copied()
            .chain(["counter", "get", "k"])
            .collect();
        let after: Vec<&str> = ["counter", "get", "k"].into_iter().chain(args).collect();
        for cli in [parsed(&before), parsed(&after)] {
            assert_eq!(cli.global.endpoints, ["a:1", "b:2"]);
            assert_eq!(cli.global.write_out, Format::Json);
            assert_eq!(cli.global.command_timeout, Duration::from_millis(250));
            assert_eq!(cli.global.level, LevelArg::Quorum);
            assert!(matches!(
                cli.command,
                Command::Client(ClientCommand::Counter(CounterCommand::Get { ref key })) if key == "k"
            ));
        }
    }

    #[test]
    fn global_flags_have_etcdctl_like_defaults() {
        // The default endpoint may come from CALM_ENDPOINTS, so only the
        // other defaults are pinned here.
        let cli = parsed(&["members"]);
        assert_eq!(cli.global.write_out, Format::Table);
        assert_eq!(cli.global.command_timeout, Duration::from_secs(5));
        assert_eq!(cli.global.level, LevelArg::Local);
        assert!(matches!(
            cli.command,
            Command::Client(ClientCommand::Members)
        ));
    }

    #[test]
    fn an_unknown_output_format_is_refused() {
        assert_eq!(refused(&["-w", "yaml", "members"]), ErrorKind::InvalidValue);
        assert_eq!(
            refused(&["status", "--write-out=xml"]),
            ErrorKind::InvalidValue
        );
    }

    #[test]
    fn a_zero_increment_is_refused_and_a_negative_one_accepted() {
        assert_eq!(
            refused(&["counter", "incr", "k", "--by", "0"]),
            ErrorKind::ValueValidation
        );
        let cli = parsed(&["counter", "incr", "k", "--by", "-3"]);
        assert!(matches!(
            cli.command,
            Command::Client(ClientCommand::Counter(CounterCommand::Incr { by: -3, .. }))
        ));
        let default = parsed(&["counter", "incr", "k"]);
        assert!(matches!(
            default.command,
            Command::Client(ClientCommand::Counter(CounterCommand::Incr { by: 1, .. }))
        ));
        assert_eq!(
            refused(&["map", "incr", "k", "f", "--by", "0"]),
            ErrorKind::ValueValidation
        );
    }

    #[test]
    fn bounded_counter_amounts_are_positive_and_transfer_names_its_target() {
        assert_eq!(
            refused(&["bcounter", "decr", "k", "0"]),
            ErrorKind::ValueValidation
        );
        let cli = parsed(&["bcounter", "transfer", "seats", "--to", "2", "5"]);
        let Command::Client(ClientCommand::BoundedCounter(BoundedCounterCommand::Transfer {
            key,
            to_node_id,
            amount,
        })) = cli.command
        else {
            panic!("expected a transfer, got {:?}", cli.command);
        };
        assert_eq!((key.as_str(), to_node_id, amount), ("seats", 2, 5));
        assert_eq!(
            refused(&["bcounter", "transfer", "seats", "5"]),
            ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn map_subcommands_take_key_field_and_value() {
        let cli = parsed(&["map", "add", "cart", "tags", "red"]);
        assert!(matches!(
            cli.command,
            Command::Client(ClientCommand::Map(MapCommand::Add { ref key, ref field, ref member }))
                if key == "cart" && field == "tags" && member == "red"
        ));
        let cli = parsed(&["map", "rm-member", "cart", "tags", "red"]);
        assert!(matches!(
            cli.command,
            Command::Client(ClientCommand::Map(MapCommand::RmMember { .. }))
        ));
    }

    #[test]
    fn a_bad_timeout_or_level_is_refused() {
        assert_eq!(
            refused(&["--command-timeout", "0s", "members"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            refused(&["--level", "strong", "members"]),
            ErrorKind::InvalidValue
        );
    }

    #[test]
    fn node_and_dev_are_subcommands_beside_the_client_commands() {
        // Their own flags are theirs to define; asking for their help
        // shows they are wired in without depending on those flags.
        assert_eq!(refused(&["node", "--help"]), ErrorKind::DisplayHelp);
        assert_eq!(refused(&["dev", "--help"]), ErrorKind::DisplayHelp);
        assert_eq!(refused(&["frobnicate"]), ErrorKind::InvalidSubcommand);
    }

    #[test]
    fn kv_commands_take_a_hex_context_and_the_global_level() {
        use cli::args::{HexBytes, KvCommand};
        let cli = parse(&[
            "--level",
            "all",
            "kv",
            "put",
            "k",
            "v",
            "--context",
            "01ab",
            "--w",
            "2",
        ])
        .expect("a valid kv put");
        assert_eq!(cli.global.level, LevelArg::All);
        let Command::Client(ClientCommand::Kv(KvCommand::Put { context, flags, .. })) = cli.command
        else {
            panic!("a kv put");
        };
        assert_eq!(context, Some(HexBytes(vec![0x01, 0xab])));
        assert_eq!(flags.w, Some(2));
        assert!(parse(&["kv", "del", "k", "--context", "0g"]).is_err());
        assert!(parse(&["kv", "get", "k"]).is_ok());
    }

    #[test]
    fn bench_runs_once_or_sweeps_with_usl() {
        let cli = parsed(&["bench", "--workload", "counter-get", "--clients", "8"]);
        let Command::Bench(BenchCommand {
            mode: None,
            args: Some(args),
        }) = cli.command
        else {
            panic!("expected a single bench, got {:?}", cli.command);
        };
        assert_eq!(args.clients, 8);
        let cli = parsed(&[
            "bench",
            "usl",
            "--workload",
            "counter-incr",
            "--clients",
            "1,2,4",
            "--svg",
            "x.svg",
            "-w",
            "json",
        ]);
        let Command::Bench(BenchCommand {
            mode: Some(BenchMode::Usl(usl)),
            ..
        }) = cli.command
        else {
            panic!("expected a sweep, got {:?}", cli.command);
        };
        assert_eq!(usl.clients, [1, 2, 4]);
        assert_eq!(usl.svg.as_deref(), Some(std::path::Path::new("x.svg")));
        assert_eq!(cli.global.write_out, Format::Json);
        assert_eq!(usl.duration, Duration::from_secs(10));
        let cli = parsed(&[
            "bench",
            "usl",
            "--workload",
            "counter-incr",
            "--nodes",
            "1,3,5",
            "--clients",
            "16",
        ]);
        let Command::Bench(BenchCommand {
            mode: Some(BenchMode::Usl(usl)),
            ..
        }) = cli.command
        else {
            panic!("expected a node-count sweep, got {:?}", cli.command);
        };
        assert_eq!((usl.nodes, usl.clients), (vec![1, 3, 5], vec![16]));
        // A single run still needs its workload.
        assert_eq!(refused(&["bench"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(
            refused(&["bench", "usl", "--clients", "1,2"]),
            ErrorKind::MissingRequiredArgument
        );
    }
}
