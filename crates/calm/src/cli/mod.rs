//! The client commands of the `calm` binary (`calm counter`, `calm set`,
//! `calm members`, ...): each runs one or a few calls of `calm-client` on a
//! current-thread runtime and prints the outcome in the chosen format.
//!
//! Writes print `OK`, reads print values (see `output` for the formats).
//! A failure prints `Error: <message>` to stderr, with the server's typed
//! detail when there is one, and exits with status 1.

pub(crate) mod args;
mod kv;
mod output;

use std::process::ExitCode;
use std::time::Duration;

use calm_client::{Client, ClientConfig, ClientError, MapUpdate, RegisterKind};

pub use args::{
    BoundedCounterCommand, ClientCommand, CounterCommand, GlobalArgs, MapCommand, RegisterCommand,
    SetCommand,
};
pub use output::Format;

/// The bound on opening one connection; a shorter command timeout wins.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs one client command and prints its outcome; exit status 1 on any
/// failure.
pub fn run(global: &GlobalArgs, command: ClientCommand) -> ExitCode {
    // One command makes one request or a few in sequence: a single thread
    // is all it needs.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("Error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let client = connect(global).map_err(CliError::Client)?;
        execute(&client, global.write_out, command).await
    });
    match outcome {
        Ok(outcome) => {
            print!("{}", outcome.stdout);
            for error in &outcome.errors {
                eprintln!("Error: {error}");
            }
            if outcome.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("Error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
enum CliError {
    /// A call failed; the client's error says whether anything changed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// `register get --multi` found a last-writer-wins register.
    #[error("the key holds an LWW register, not a multi-value one (--multi)")]
    NotMultiValue,
}

fn connect(global: &GlobalArgs) -> Result<Client, ClientError> {
    let config = ClientConfig {
        timeout: global.command_timeout,
        connect_timeout: global.command_timeout.min(CONNECT_TIMEOUT),
        level: global.level.into(),
        ..ClientConfig::default()
    };
    Client::connect_with(&global.endpoints, config)
}

/// What a command printed: its output, and failures that did not stop it
/// (`calm status` reports each endpoint that did not answer).
struct Outcome {
    stdout: String,
    errors: Vec<ClientError>,
}

impl From<String> for Outcome {
    fn from(stdout: String) -> Outcome {
        Outcome {
            stdout,
            errors: Vec::new(),
        }
    }
}

async fn execute(
    client: &Client,
    format: Format,
    command: ClientCommand,
) -> Result<Outcome, CliError> {
    let stdout = match command {
        ClientCommand::Counter(command) => counter(client, format, command).await?,
        ClientCommand::Set(command) => set(client, format, command).await?,
        ClientCommand::Register(command) => register(client, format, command).await?,
        ClientCommand::Map(command) => map(client, format, command).await?,
        ClientCommand::BoundedCounter(command) => bounded(client, format, command).await?,
        ClientCommand::Kv(command) => kv::run(client, format, command).await?,
        ClientCommand::Members => output::members(format, &client.members().await?),
        ClientCommand::Status => return Ok(status(client, format).await),
    };
    Ok(stdout.into())
}

async fn counter(
    client: &Client,
    format: Format,
    command: CounterCommand,
) -> Result<String, CliError> {
    Ok(match command {
        CounterCommand::Incr { key, by } => {
            output::write_done(format, &key, &client.counter_increment(&key, by).await?)
        }
        CounterCommand::Get { key } => {
            output::counter(format, &key, &client.counter_get(&key).await?)
        }
    })
}

async fn set(client: &Client, format: Format, command: SetCommand) -> Result<String, CliError> {
    Ok(match command {
        SetCommand::Add { key, member } => {
            output::write_done(format, &key, &client.set_add(&key, member).await?)
        }
        SetCommand::Rm { key, member } => {
            output::write_done(format, &key, &client.set_remove(&key, member).await?)
        }
        SetCommand::Members { key } => {
            output::set_members(format, &key, &client.set_members(&key).await?)
        }
    })
}

async fn register(
    client: &Client,
    format: Format,
    command: RegisterCommand,
) -> Result<String, CliError> {
    Ok(match command {
        RegisterCommand::Set { key, value, multi } => {
            let kind = if multi {
                RegisterKind::MultiValue
            } else {
                RegisterKind::Lww
            };
            output::write_done(format, &key, &client.register_set(&key, value, kind).await?)
        }
        RegisterCommand::Get { key, multi } => {
            let reply = client.register_get(&key).await?;
            if multi && reply.value.kind == Some(RegisterKind::Lww) {
                return Err(CliError::NotMultiValue);
            }
            output::register(format, &key, &reply)
        }
    })
}

async fn map(client: &Client, format: Format, command: MapCommand) -> Result<String, CliError> {
    let (key, field, update) = match command {
        MapCommand::Get { key } => {
            return Ok(output::map(format, &key, &client.map_get(&key).await?));
        }
        MapCommand::Rm { key, field } => {
            let reply = client.map_remove_field(&key, field).await?;
            return Ok(output::write_done(format, &key, &reply));
        }
        MapCommand::Set { key, field, value } => {
            (key, field, MapUpdate::RegisterWrite(value.into_bytes()))
        }
        MapCommand::Incr { key, field, by } => (key, field, MapUpdate::CounterIncrement(by)),
        MapCommand::Add { key, field, member } => {
            (key, field, MapUpdate::SetAdd(member.into_bytes()))
        }
        MapCommand::RmMember { key, field, member } => {
            (key, field, MapUpdate::SetRemove(member.into_bytes()))
        }
    };
    let reply = client.map_update(&key, field, update).await?;
    Ok(output::write_done(format, &key, &reply))
}

async fn bounded(
    client: &Client,
    format: Format,
    command: BoundedCounterCommand,
) -> Result<String, CliError> {
    Ok(match command {
        BoundedCounterCommand::Incr { key, amount } => {
            let reply = client.bounded_counter_increment(&key, amount).await?;
            output::write_done(format, &key, &reply)
        }
        BoundedCounterCommand::Decr { key, amount } => {
            let reply = client.bounded_counter_decrement(&key, amount).await?;
            output::write_done(format, &key, &reply)
        }
        BoundedCounterCommand::Transfer {
            key,
            to_node_id,
            amount,
        } => {
            let reply = client
                .bounded_counter_transfer(&key, to_node_id, amount)
                .await?;
            output::write_done(format, &key, &reply)
        }
        BoundedCounterCommand::Get { key } => {
            output::bounded_counter(format, &key, &client.bounded_counter_get(&key).await?)
        }
    })
}

/// Asks every endpoint for its status, like `etcdctl endpoint status`: the
/// table lists those that answered, and each that did not is an error.
async fn status(client: &Client, format: Format) -> Outcome {
    let mut answered = Vec::new();
    let mut errors = Vec::new();
    let endpoints: Vec<String> = client.endpoints().into_iter().map(str::to_owned).collect();
    for (index, endpoint) in endpoints.into_iter().enumerate() {
        match client.status_of(index).await {
            Ok(status) => answered.push((endpoint, status)),
            Err(error) => errors.push(error),
        }
    }
    // A table of no rows says nothing the errors do not; JSON still
    // prints its (empty) array so a program always gets a document.
    let stdout = if answered.is_empty() && format == Format::Table {
        String::new()
    } else {
        output::statuses(format, &answered)
    };
    Outcome { stdout, errors }
}
