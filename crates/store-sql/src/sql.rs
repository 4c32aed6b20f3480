//! The small SQL interface the store's logic is written against, so that the same
//! queries run on SQLite and on PostgreSQL. Statements use SQLite's numbered
//! placeholders (`?1`, `?2`, …); the PostgreSQL backend rewrites them to `$1`, `$2`.
//! Integers are 64-bit and booleans are integers on both backends, JSON is text.

use qtask_store::{StoreError, StoreResult};
use std::borrow::Cow;

/// Which SQL dialect a connection speaks, for the few statements that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A statement argument or a column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(Cow<'a, str>),
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(text: &'a str) -> Self {
        Value::Text(Cow::Borrowed(text))
    }
}

impl<'a> From<&'a String> for Value<'a> {
    fn from(text: &'a String) -> Self {
        Value::Text(Cow::Borrowed(text))
    }
}

impl From<String> for Value<'_> {
    fn from(text: String) -> Self {
        Value::Text(Cow::Owned(text))
    }
}

impl From<i64> for Value<'_> {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

impl From<u32> for Value<'_> {
    fn from(n: u32) -> Self {
        Value::Int(i64::from(n))
    }
}

impl From<u64> for Value<'_> {
    fn from(n: u64) -> Self {
        // Stored IDs, fences and counts stay far below 2^63.
        Value::Int(n as i64)
    }
}

impl From<bool> for Value<'_> {
    fn from(b: bool) -> Self {
        Value::Int(i64::from(b))
    }
}

impl<'a, T: Into<Value<'a>>> From<Option<T>> for Value<'a> {
    fn from(value: Option<T>) -> Self {
        value.map_or(Value::Null, Into::into)
    }
}

/// A Rust value as a statement argument, borrowed where it can be.
pub trait ToValue {
    fn to_value(&self) -> Value<'_>;
}

impl ToValue for str {
    fn to_value(&self) -> Value<'_> {
        Value::Text(Cow::Borrowed(self))
    }
}

impl ToValue for String {
    fn to_value(&self) -> Value<'_> {
        Value::Text(Cow::Borrowed(self))
    }
}

macro_rules! integer_values {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value<'_> {
                Value::from(*self)
            }
        }
    )*};
}
integer_values!(i64, u32, u64, bool);

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value<'_> {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value<'_> {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}

/// The arguments of a statement, borrowed: `args![a, b, c]`.
#[macro_export]
macro_rules! args {
    ($($arg:expr),* $(,)?) => {
        &[$($crate::sql::ToValue::to_value(&$arg)),*]
    };
}

/// One result row, its values owned.
#[derive(Debug, Clone, Default)]
pub struct Row(pub Vec<Value<'static>>);

impl Row {
    /// Column `index` as `T`; a missing column or a value of another type is a
    /// backend error (a corrupt store or a bug), never a panic.
    pub fn get<T: FromValue>(&self, index: usize) -> StoreResult<T> {
        let value = self
            .0
            .get(index)
            .ok_or_else(|| StoreError::Backend(format!("no column {index} in a result row")))?;
        T::from_value(value).ok_or_else(|| {
            StoreError::Backend(format!(
                "column {index} holds {value:?}, not a {}",
                std::any::type_name::<T>()
            ))
        })
    }
}

/// A Rust value read from a column.
pub trait FromValue: Sized {
    fn from_value(value: &Value<'_>) -> Option<Self>;
}

impl FromValue for i64 {
    fn from_value(value: &Value<'_>) -> Option<Self> {
        match value {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }
}

impl FromValue for u32 {
    fn from_value(value: &Value<'_>) -> Option<Self> {
        i64::from_value(value).and_then(|n| u32::try_from(n).ok())
    }
}

impl FromValue for u64 {
    fn from_value(value: &Value<'_>) -> Option<Self> {
        i64::from_value(value).and_then(|n| u64::try_from(n).ok())
    }
}

impl FromValue for bool {
    fn from_value(value: &Value<'_>) -> Option<Self> {
        i64::from_value(value).map(|n| n != 0)
    }
}

impl FromValue for String {
    fn from_value(value: &Value<'_>) -> Option<Self> {
        match value {
            Value::Text(text) => Some(text.clone().into_owned()),
            _ => None,
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value<'_>) -> Option<Self> {
        match value {
            Value::Null => Some(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// A connection, or a connection inside the writer's open transaction.
pub trait Db {
    fn dialect(&self) -> Dialect;
    /// Runs a statement; returns how many rows it changed.
    fn execute(&mut self, sql: &str, args: &[Value<'_>]) -> StoreResult<u64>;
    /// Runs a query; returns every row.
    fn query(&mut self, sql: &str, args: &[Value<'_>]) -> StoreResult<Vec<Row>>;
    /// Runs transaction control: a statement without arguments or rows, which a backend
    /// may keep prepared since the writer runs the same few all the time. (PostgreSQL's
    /// also takes several statements separated by `;`, in one round trip.) A backend may
    /// pipeline it like [`Db::send`].
    fn control(&mut self, sql: &str) -> StoreResult<()>;
    /// Runs a statement whose outcome the caller does not read. A backend may send it
    /// without waiting for its answer (PostgreSQL pipelines it); its error then surfaces
    /// at the next `execute`, `query` or [`Db::flush`]. It still runs in order: later
    /// statements see what it did.
    fn send(&mut self, sql: &str, args: &[Value<'_>]) -> StoreResult<()> {
        self.execute(sql, args).map(drop)
    }
    /// Waits for every statement sent; returns the first error among them.
    fn flush(&mut self) -> StoreResult<()> {
        Ok(())
    }
    /// Runs an `INSERT` of one row (`sql`, without `RETURNING`) into a table keyed by an
    /// integer `id` it assigns; answers that key. SQLite tells it without `RETURNING`,
    /// which it runs as a trigger: a temporary table and a statement journal each time.
    fn insert_returning_id(&mut self, sql: &str, args: &[Value<'_>]) -> StoreResult<i64> {
        let rows = self.query(&format!("{sql} RETURNING id"), args)?;
        rows.first()
            .ok_or_else(|| StoreError::Backend(format!("no row from: {sql:.120}")))?
            .get(0)
    }
}

impl dyn Db + '_ {
    /// The first row mapped by `map`, if there is one.
    pub fn query_opt<T>(
        &mut self,
        sql: &str,
        args: &[Value<'_>],
        map: impl FnOnce(&Row) -> StoreResult<T>,
    ) -> StoreResult<Option<T>> {
        self.query(sql, args)?.first().map(map).transpose()
    }

    /// The first row mapped by `map`; no row is a backend error.
    pub fn query_one<T>(
        &mut self,
        sql: &str,
        args: &[Value<'_>],
        map: impl FnOnce(&Row) -> StoreResult<T>,
    ) -> StoreResult<T> {
        self.query_opt(sql, args, map)?
            .ok_or_else(|| StoreError::Backend(format!("no row from: {sql:.120}")))
    }

    /// Every row mapped by `map`.
    pub fn query_all<T>(
        &mut self,
        sql: &str,
        args: &[Value<'_>],
        map: impl FnMut(&Row) -> StoreResult<T>,
    ) -> StoreResult<Vec<T>> {
        self.query(sql, args)?.iter().map(map).collect()
    }
}

/// Rewrites `?N` placeholders as PostgreSQL's `$N`. The store's statements hold no
/// `?` inside string literals, so a plain scan is enough.
pub fn numbered_for_postgres(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(ch);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_renumbered_for_postgres() {
        assert_eq!(
            numbered_for_postgres("SELECT a FROM t WHERE b = ?1 AND c IN (?2, ?13)"),
            "SELECT a FROM t WHERE b = $1 AND c IN ($2, $13)"
        );
    }

    #[test]
    fn a_column_of_another_type_is_an_error_not_a_panic() {
        let row = Row(vec![Value::Text("x".into()), Value::Null, Value::Int(-1)]);
        assert_eq!(row.get::<String>(0).unwrap(), "x");
        assert_eq!(row.get::<Option<i64>>(1).unwrap(), None);
        assert!(row.get::<i64>(0).is_err());
        assert!(row.get::<u32>(2).is_err());
        assert!(row.get::<i64>(3).is_err());
    }
}
