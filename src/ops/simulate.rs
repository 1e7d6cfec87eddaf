//! `warmline simulate`: a call against a dialplan with audio files (being written).
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

pub struct SimulateArgs {
    pub dialplan: PathBuf,
    pub steps: Vec<Step>,
    pub language: Option<String>,
    pub json: bool,
}

pub enum Step {
    Say(PathBuf),
    Press(String),
    Wait(Duration),
}

pub fn run(_cfg: &crate::config::Config, _args: &SimulateArgs) -> ExitCode {
    eprintln!("warmline simulate: not available in this build");
    ExitCode::from(2)
}
