//! How listing commands print: a table for people, or the API's JSON answer for
//! programs.

use crate::client::Client;
use crate::exit::{answer_code, CliError, Exit};
use comfy_table::{presets, Cell, Table};
use serde_json::Value;
use std::io::IsTerminal;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns.
    Table,
    /// The API's answer, unchanged (one JSON document; event streams: one per line).
    Json,
}

#[derive(Debug, Clone, Default, clap::Args)]
pub struct OutputArgs {
    /// table or json [default: table when stdout is a terminal, else json].
    #[arg(long, short = 'o', value_enum, global = true)]
    pub output: Option<OutputFormat>,
}

impl OutputArgs {
    pub fn format(&self) -> OutputFormat {
        self.output.unwrap_or_else(|| {
            if std::io::stdout().is_terminal() {
                OutputFormat::Table
            } else {
                OutputFormat::Json
            }
        })
    }
}

/// A borderless table with a header row, like `ps` or `kubectl get`: easy to read and
/// to `grep`. Columns are two spaces apart; lines have no trailing spaces.
pub fn table(headers: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    table.set_header(headers.iter().map(Cell::new));
    for row in rows {
        table.add_row(row);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table.trim_fmt()
}

/// A value as a table cell: strings bare, `null` or absent as `-`, the rest as JSON.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) if text.is_empty() => "-".to_owned(),
        Value::String(text) => text.clone(),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            let items: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            if items.is_empty() {
                "-".to_owned()
            } else {
                items.join(",")
            }
        }
        other => other.to_string(),
    }
}

/// `code message` of an error object (`{code, message}`), shortened to `limit`
/// characters for a table; `-` when there is none.
pub fn error_cell(error: &Value, limit: usize) -> String {
    if error.is_null() {
        return "-".to_owned();
    }
    let text = format!(
        "{} {}",
        cell(&error["code"]),
        error["message"].as_str().unwrap_or_default()
    );
    shorten(&text, limit)
}

pub fn shorten(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_owned();
    }
    let kept: String = text.chars().take(limit.saturating_sub(1)).collect();
    format!("{kept}…")
}

pub fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON values serialize")
    );
}

/// Sends one call and prints its answer: as JSON, or through `render` as a table.
/// An error answer is printed as it is in JSON and as a line on stderr for tables,
/// and exits 1.
pub async fn query(
    client: &Client,
    action: &str,
    params: Vec<(String, String)>,
    format: OutputFormat,
    render: impl FnOnce(&Value) -> String,
) -> anyhow::Result<Exit> {
    let answer = client.call(action, params).await?;
    let failed = answer_code(&answer) != 0;
    match format {
        OutputFormat::Json => print_json(&answer),
        OutputFormat::Table if failed => {}
        OutputFormat::Table => print!("{}", render(&answer)),
    }
    if failed {
        return Err(CliError::answer(action, &answer).into());
    }
    Ok(Exit::Success)
}

/// "showing 1–20 of 143" when a listing has more than it shows.
pub fn page_footer(answer: &Value, items: usize, offset: u64) -> String {
    let total = answer["totalCount"].as_u64().unwrap_or(items as u64);
    if total as usize <= items && offset == 0 {
        return String::new();
    }
    if items == 0 {
        return format!("(nothing at offset {offset}; {total} in all)\n");
    }
    let last = offset + items as u64;
    let more = if last < total {
        format!("; see more with --offset {last}")
    } else {
        String::new()
    };
    format!("(showing {}–{last} of {total}{more})\n", offset + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells_and_footers() {
        assert_eq!(cell(&Value::Null), "-");
        assert_eq!(cell(&json!(["43.0.0.1", "43.0.0.2"])), "43.0.0.1,43.0.0.2");
        assert_eq!(cell(&json!(3)), "3");
        assert_eq!(
            error_cell(&json!({"code": 5100, "message": "simulated fault"}), 12),
            "5100 simula…"
        );
        assert_eq!(page_footer(&json!({"totalCount": 2}), 2, 0), "");
        assert_eq!(
            page_footer(&json!({"totalCount": 45}), 20, 20),
            "(showing 21–40 of 45; see more with --offset 40)\n"
        );
    }

    #[test]
    fn tables_have_a_header_and_aligned_columns() {
        let text = table(
            &["ID", "STATE"],
            [
                vec!["1".into(), "SUCCESS".into()],
                vec!["22".into(), "FAILED".into()],
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].contains("ID") && lines[0].contains("STATE"),
            "{text}"
        );
        let column = |line: &str, word: &str| line.find(word).unwrap();
        assert_eq!(
            column(lines[1], "SUCCESS"),
            column(lines[2], "FAILED"),
            "{text}"
        );
    }
}
