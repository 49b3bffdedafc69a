//! One module per subcommand.
pub mod bench;
pub mod build;
pub mod plugins;
pub mod model;
pub mod train;
pub mod generate;
