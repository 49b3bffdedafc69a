//! One module per subcommand.
pub mod bench;
pub mod build;
pub mod generate;
pub mod model;
pub mod plugins;
pub mod train;
