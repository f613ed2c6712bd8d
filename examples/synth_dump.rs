//! Writes the synthetic platform of about N entities as one Cedar entities JSON file:
//! `cargo run --release --example synth_dump -- 100000 > platform.json` (for timing `policyd import`).
fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "100000".into())
        .parse()?;
    let all: Vec<serde_json::Value> =
        policyd::synth::entities(policyd::synth::Shape::about(n), 42).collect();
    println!("{}", serde_json::Value::Array(all));
    Ok(())
}
