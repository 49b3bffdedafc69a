pub use bagel_text::uid;
