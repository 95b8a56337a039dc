//! The old service's database, never trusted: checked identifiers,
//! quoted; blobs fetched one at a time after their size; the reference
//! columns the migration writes back (and a rollback clears).

use std::collections::HashMap;

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::{Error, Result, SourceTable, quoted};

/// Connections to source databases, opened on first use and kept, and
/// the tables read through them, checked once (the API serves assets not
/// moved yet from there).
#[derive(Debug, Clone, Default)]
pub struct Sources {
    allowlist: crate::sources::Allowlist,
    open: std::sync::Arc<std::sync::Mutex<HashMap<String, Source>>>,
    tables: std::sync::Arc<std::sync::Mutex<HashMap<String, Table>>>,
}

impl Sources {
    /// No source open yet; those opened must be in `allowlist`.
    pub fn new(allowlist: crate::sources::Allowlist) -> Self {
        Self {
            allowlist,
            ..Self::default()
        }
    }

    /// The source at `url` and its table `spec` (columns checked, id type
    /// learnt on first use; nothing added to it).
    pub async fn table(
        &self,
        url: &str,
        spec: &SourceTable,
        session_column: Option<&str>,
    ) -> Result<(Source, Table)> {
        let source = self.source(url)?;
        let key = serde_json::to_string(&(url, spec, session_column))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let known = lock(&self.tables).get(&key).cloned();
        let table = match known {
            Some(table) => table,
            None => {
                let table = source.table(spec, session_column, true).await?;
                lock(&self.tables).insert(key, table.clone());
                table
            }
        };
        Ok((source, table))
    }

    /// The source at `url`, its pool made once. Lazily connected: an
    /// unreachable source fails the requests that need it (each within the
    /// acquire timeout), nobody else.
    fn source(&self, url: &str) -> Result<Source> {
        let mut open = lock(&self.open);
        if let Some(source) = open.get(url) {
            return Ok(source.clone());
        }
        let pool = crate::sources::pg_pool_lazy(&self.allowlist, url, 4)?;
        let source = Source { pool };
        open.insert(url.to_owned(), source.clone());
        Ok(source)
    }
}

/// A cache's map; a panic elsewhere while it was held leaves it usable.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One asset of the source, without its bytes.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SourceAsset {
    /// Its id, as text.
    pub id: String,
    /// Its campaign (or, with a session column, its session id), as text.
    pub owner: Option<String>,
    /// Its file name.
    pub name: Option<String>,
    /// Its declared content type.
    pub content_type: Option<String>,
    /// Its size in bytes.
    pub size: i64,
}

/// The old service's database.
#[derive(Debug, Clone)]
pub struct Source {
    pool: PgPool,
}

/// The SQL of one table, with its names checked and quoted.
#[derive(Debug, Clone)]
pub struct Table {
    spec: SourceTable,
    table: String,
    id: String,
    owner: String,
    name: String,
    content_type: String,
    data: String,
    /// The id column's type, for casting a text id back.
    id_type: &'static str,
    /// The condition of a row still to migrate (with the reference
    /// columns, which a dry run may not find: then every row with bytes).
    pending: String,
}

impl Table {
    /// Its declaration.
    pub fn spec(&self) -> &SourceTable {
        &self.spec
    }

    /// `template` with `{table}`, `{id}`, `{id_type}`, `{data}`, `{owner}`,
    /// `{name}` and `{ct}` filled in with the checked, quoted names.
    fn sql(&self, template: &str) -> String {
        template
            .replace("{table}", &self.table)
            .replace("{id_type}", self.id_type)
            .replace("{id}", &self.id)
            .replace("{data}", &self.data)
            .replace("{owner}", &self.owner)
            .replace("{name}", &self.name)
            .replace("{ct}", &self.content_type)
    }
}

/// The columns of a [`SourceAsset`], from a source table aliased `t`.
const ASSET_COLUMNS: &str = "t.{id}::text AS id, t.{owner}::text AS owner, t.{name}::text AS name,
     t.{ct}::text AS content_type, coalesce(octet_length(t.{data}), 0)::bigint AS size";

impl Source {
    /// Connects to the source database (two connections), if `allowlist`
    /// allows it.
    pub async fn connect(allowlist: &crate::sources::Allowlist, url: &str) -> Result<Self> {
        let pool = crate::sources::pg_connect(allowlist, url, 2).await?;
        Ok(Self { pool })
    }

    /// Checks that `spec`'s table and columns exist, learns its id type,
    /// and (unless `dry_run`) adds the reference columns the migration
    /// writes if they are not there: `storage_asset_id uuid`,
    /// `storage_version_id integer`, `storage_metadata jsonb`.
    pub async fn table(
        &self,
        spec: &SourceTable,
        session_column: Option<&str>,
        dry_run: bool,
    ) -> Result<Table> {
        let table = quoted(&spec.table)?;
        let columns: Vec<(String, String)> = sqlx::query_as(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
             FROM pg_attribute a
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
        )
        .bind(&table)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::source)?;
        if columns.is_empty() {
            return Err(Error::Invalid(format!(
                "the source has no table {:?}",
                spec.table
            )));
        }
        let type_of = |name: &str| {
            columns
                .iter()
                .find(|(c, _)| c == name)
                .map(|(_, t)| t.as_str())
        };
        let owner_column = session_column.unwrap_or(&spec.campaign);
        for column in [
            &spec.id,
            owner_column,
            &spec.name,
            &spec.content_type,
            &spec.data,
        ] {
            if type_of(column).is_none() {
                return Err(Error::Invalid(format!(
                    "the source table {:?} has no column {column:?}",
                    spec.table
                )));
            }
        }
        let id_type = match type_of(&spec.id) {
            Some("bigint") => "bigint",
            Some("integer") => "integer",
            Some("smallint") => "smallint",
            Some("uuid") => "uuid",
            Some(t) if t == "text" || t.starts_with("character varying") => "text",
            Some(t) => {
                return Err(Error::Invalid(format!(
                    "the id column {:?} is {t}; integer, text or uuid ids are supported",
                    spec.id
                )));
            }
            None => {
                return Err(Error::Invalid(format!(
                    "the source table {:?} has no column {:?}",
                    spec.table, spec.id
                )));
            }
        };
        if !dry_run {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER TABLE {table}
                     ADD COLUMN IF NOT EXISTS storage_asset_id uuid,
                     ADD COLUMN IF NOT EXISTS storage_version_id integer,
                     ADD COLUMN IF NOT EXISTS storage_metadata jsonb"
            )))
            .execute(&self.pool)
            .await
            .map_err(Error::source)?;
        }
        let data = quoted(&spec.data)?;
        let pending = if dry_run && type_of("storage_asset_id").is_none() {
            format!("t.{data} IS NOT NULL")
        } else {
            format!("t.{data} IS NOT NULL AND t.storage_asset_id IS NULL")
        };
        Ok(Table {
            spec: spec.clone(),
            table,
            id: quoted(&spec.id)?,
            owner: quoted(owner_column)?,
            name: quoted(&spec.name)?,
            content_type: quoted(&spec.content_type)?,
            data,
            id_type,
            pending,
        })
    }

    /// How many assets of `table` are not migrated yet.
    pub async fn count_pending(&self, table: &Table) -> Result<i64> {
        let filter = &table.pending;
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {} AS t WHERE {filter}",
            table.table
        )))
        .fetch_one(&self.pool)
        .await
        .map_err(Error::source)
    }

    /// Up to `limit` assets of `table` not migrated yet, in id order after
    /// `after`, without their bytes.
    pub async fn page(
        &self,
        table: &Table,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<SourceAsset>> {
        let filter = &table.pending;
        // Qualified: a bare `ORDER BY id` would sort by the text alias.
        let sql = table.sql(&format!(
            "SELECT {ASSET_COLUMNS} FROM {{table}} AS t
             WHERE {filter} AND ($1::text IS NULL OR t.{{id}} > $1::text::{{id_type}})
             ORDER BY t.{{id}} LIMIT $2"
        ));
        sqlx::query_as::<_, SourceAsset>(sqlx::AssertSqlSafe(sql))
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::source)
    }

    /// Asset `id` of `table`, without its bytes (None: no such row, or an
    /// id that cannot be one of the table's).
    pub async fn asset(&self, table: &Table, id: &str) -> Result<Option<SourceAsset>> {
        let fits = match table.id_type {
            "bigint" => id.parse::<i64>().is_ok(),
            "integer" => id.parse::<i32>().is_ok(),
            "smallint" => id.parse::<i16>().is_ok(),
            "uuid" => Uuid::try_parse(id).is_ok(),
            _ => !id.contains('\0'),
        };
        if !fits {
            return Ok(None);
        }
        let sql = table.sql(&format!(
            "SELECT {ASSET_COLUMNS} FROM {{table}} AS t WHERE t.{{id}} = $1::text::{{id_type}}"
        ));
        sqlx::query_as::<_, SourceAsset>(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::source)
    }

    /// The bytes of asset `id` (None: gone, or no bytes).
    pub async fn blob(&self, table: &Table, id: &str) -> Result<Option<Vec<u8>>> {
        let sql = table.sql("SELECT {data} FROM {table} WHERE {id} = $1::text::{id_type}");
        let row: Option<Option<Vec<u8>>> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::source)?;
        Ok(row.flatten())
    }

    /// Points asset `id` at its media item and, unless `keep`, clears its
    /// bytes.
    pub async fn write_back(
        &self,
        table: &Table,
        id: &str,
        media_id: Uuid,
        metadata: &Value,
        keep: bool,
    ) -> Result<()> {
        let sql = table.sql(
            "UPDATE {table} SET storage_asset_id = $2, storage_version_id = 1,
                 storage_metadata = $3, {data} = CASE WHEN $4 THEN {data} ELSE NULL END
             WHERE {id} = $1::text::{id_type}",
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(media_id)
            .bind(metadata)
            .bind(keep)
            .execute(&self.pool)
            .await
            .map_err(Error::source)?;
        Ok(())
    }

    /// Whether asset `id` still holds its bytes (a run that kept the
    /// source, or a row never cleared).
    pub async fn holds_bytes(&self, table: &Table, id: &str) -> Result<bool> {
        let sql =
            table.sql("SELECT {data} IS NOT NULL FROM {table} WHERE {id} = $1::text::{id_type}");
        let held: Option<bool> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::source)?;
        Ok(held.unwrap_or(false))
    }

    /// Puts `bytes` back into asset `id` (if its bytes were cleared) and
    /// clears the references.
    pub async fn restore(&self, table: &Table, id: &str, bytes: Option<&[u8]>) -> Result<()> {
        let sql = table.sql(
            "UPDATE {table} SET {data} = coalesce({data}, $2), storage_asset_id = NULL,
                 storage_version_id = NULL, storage_metadata = NULL
             WHERE {id} = $1::text::{id_type}",
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(bytes)
            .execute(&self.pool)
            .await
            .map_err(Error::source)?;
        Ok(())
    }
}
