//! Statements that are prepared once per connection, where diesel's builders would not be.
//!
//! diesel's statement cache passes over every statement holding an `UPDATE`, an upsert's
//! `DO UPDATE`, an `IN` list or raw SQL (`sql_query`), and prepares it again each time it runs
//! (its shape could change between runs). Several of those run for every report, on the one
//! thread that writes to SQLite: preparing them was 6% of the server's time per report. A
//! [`Fixed`] statement is one SQL text with `?` where each value goes, known to diesel by a
//! type of its own, so it is prepared the first time and found in the cache after that.

use std::marker::PhantomData;

use chrono::NaiveDateTime;
use diesel::backend::Backend;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::result::QueryResult;
use diesel::serialize::ToSql;
use diesel::sql_types::{BigInt, Bool, HasSqlType, Nullable, Text, Timestamp};

/// A value bound to one `?`.
#[derive(Debug, Clone, Copy)]
pub enum Bind<'a> {
    Int(i64),
    OptInt(Option<i64>),
    Text(&'a str),
    OptText(Option<&'a str>),
    Bool(bool),
    Time(NaiveDateTime),
}

/// An SQL text with `N` places for values, each a `?` (none in a literal). Made in a `const`,
/// so a text with another number of places does not compile, and the places are found once,
/// not every time a statement is run.
#[derive(Debug)]
pub struct Sql<const N: usize> {
    text: &'static str,
    places: [usize; N],
}

impl<const N: usize> Sql<N> {
    pub const fn new(text: &'static str) -> Self {
        let bytes = text.as_bytes();
        let mut places = [0; N];
        let (mut found, mut i) = (0, 0);
        while i < bytes.len() {
            if bytes[i] == b'?' {
                assert!(found < N, "more places (?) in the SQL than values");
                places[found] = i;
                found += 1;
            }
            i += 1;
        }
        assert!(found == N, "fewer places (?) in the SQL than values");
        Sql { text, places }
    }
}

/// A statement and its values. `Id` is a type naming the statement (an empty enum): diesel
/// finds the prepared statement by it, without writing out the SQL to look it up.
#[derive(Debug)]
pub struct Fixed<'a, Id, const N: usize> {
    sql: &'static Sql<N>,
    binds: [Bind<'a>; N],
    id: PhantomData<Id>,
}

impl<'a, Id, const N: usize> Fixed<'a, Id, N> {
    pub fn new(sql: &'static Sql<N>, binds: [Bind<'a>; N]) -> Self {
        Fixed { sql, binds, id: PhantomData }
    }
}

impl<Id: 'static, const N: usize> QueryId for Fixed<'_, Id, N> {
    type QueryId = Id;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<DB, Id, const N: usize> QueryFragment<DB> for Fixed<'_, Id, N>
where
    DB: Backend + HasSqlType<BigInt> + HasSqlType<Text> + HasSqlType<Bool> + HasSqlType<Timestamp>,
    i64: ToSql<BigInt, DB>,
    Option<i64>: ToSql<Nullable<BigInt>, DB>,
    str: ToSql<Text, DB>,
    for<'x> Option<&'x str>: ToSql<Nullable<Text>, DB>,
    bool: ToSql<Bool, DB>,
    NaiveDateTime: ToSql<Timestamp, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let text = self.sql.text;
        let mut start = 0;
        for (bind, &at) in self.binds.iter().zip(&self.sql.places) {
            out.push_sql(&text[start..at]);
            match bind {
                Bind::Int(v) => out.push_bind_param::<BigInt, _>(v)?,
                Bind::OptInt(v) => out.push_bind_param::<Nullable<BigInt>, _>(v)?,
                Bind::Text(v) => out.push_bind_param::<Text, _>(*v)?,
                Bind::OptText(v) => out.push_bind_param::<Nullable<Text>, _>(v)?,
                Bind::Bool(v) => out.push_bind_param::<Bool, _>(v)?,
                Bind::Time(v) => out.push_bind_param::<Timestamp, _>(v)?,
            }
            start = at + 1;
        }
        out.push_sql(&text[start..]);
        Ok(())
    }
}

impl<Conn, Id, const N: usize> diesel::RunQueryDsl<Conn> for Fixed<'_, Id, N> {}
