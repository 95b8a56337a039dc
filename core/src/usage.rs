//! Usage: what the model and media providers were paid for, per turn and
//! summed per day, session, user, provider and model (`turns.usage`,
//! `usage_daily`).
//!
//! Counts are written where the work is recorded, never separately: a
//! completed turn's token counts in the fenced step that records its reply
//! (`turns::steps`), a generated image or narration in the statement that
//! makes its media item ready (`media::record_generated`). The daily sums
//! are therefore exactly the recorded counts, once each. Token counts are
//! the provider's own (`usage` of a chat completion; the final chunk of a
//! stream asked with `stream_options.include_usage`); a reply whose
//! provider reported none adds a turn and no tokens. Media are counted in
//! units: one per image, the characters of a narration's text.
//!
//! This module reads the sums back for members (one session) and
//! operators (any filter), and for the budgets that will be checked
//! against them.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

/// The token counts of one completed reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenUsage {
    /// Which provider answered (`openai`, `scripted`, ...).
    pub provider: String,
    /// The model it ran.
    pub model: String,
    /// Tokens of the request, as the provider counted them.
    pub prompt_tokens: i64,
    /// Tokens of the reply, as the provider counted them.
    pub completion_tokens: i64,
    /// How long the call waited for the provider's limits (shared by every
    /// worker) and pauses, in milliseconds; absent when it did not wait.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub limiter_wait_ms: i64,
    /// True when the provider reported no counts for some request of the
    /// reply (llama-cpp-python's server sends none in a stream) and
    /// questboard's estimate stands in for them (a token per four
    /// characters, four per message); absent when every count is the
    /// provider's. Estimated tokens count towards budgets and limits like
    /// reported ones.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl TokenUsage {
    /// Adds another request's counts (the tool round of a reply).
    pub fn add(&mut self, other: &TokenUsage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.estimated |= other.estimated;
    }
}

/// Sums of usage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct Totals {
    /// Completed turns.
    pub turns: i64,
    /// Tokens of the requests.
    pub prompt_tokens: i64,
    /// Tokens of the replies.
    pub completion_tokens: i64,
    /// Images generated.
    pub images: i64,
    /// Characters of narration generated.
    pub speech_characters: i64,
}

/// Usage on one UTC day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct Day {
    /// The day (UTC).
    pub day: NaiveDate,
    /// Its sums.
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub totals: Totals,
}

/// Usage of one provider's model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct Model {
    /// The provider.
    pub provider: String,
    /// The model.
    pub model: String,
    /// Its sums.
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub totals: Totals,
}

/// Usage of one user or one session (the operators' report).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct Share {
    /// The user id, or the session id.
    pub id: String,
    /// Its sums.
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub totals: Totals,
}

/// Which usage to sum: every field narrows; days are UTC, both ends kept.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// One session.
    pub session: Option<Uuid>,
    /// One user.
    pub user: Option<String>,
    /// From this day.
    pub from: Option<NaiveDate>,
    /// Up to this day.
    pub to: Option<NaiveDate>,
}

/// A usage report: totals, by day, by model, and (operators) by user and
/// by session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Report {
    /// Everything the filter selects.
    pub totals: Totals,
    /// By UTC day, oldest first.
    pub days: Vec<Day>,
    /// By provider and model.
    pub models: Vec<Model>,
}

/// The most users and sessions an operators' report lists (the ones with
/// the most tokens).
pub const TOP: i64 = 100;

const SUMS: &str = "coalesce(sum(turns), 0)::bigint AS turns,
     coalesce(sum(prompt_tokens), 0)::bigint AS prompt_tokens,
     coalesce(sum(completion_tokens), 0)::bigint AS completion_tokens,
     coalesce(sum(images), 0)::bigint AS images,
     coalesce(sum(speech_characters), 0)::bigint AS speech_characters";

const WHERE: &str = "($1::uuid IS NULL OR session_id = $1)
     AND ($2::text IS NULL OR user_id = $2)
     AND ($3::date IS NULL OR day >= $3)
     AND ($4::date IS NULL OR day <= $4)";

fn select<'q, O>(
    sql: &'q str,
    filter: &'q Filter,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>
where
    O: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(filter.session)
        .bind(filter.user.as_deref())
        .bind(filter.from)
        .bind(filter.to)
}

/// What one generated media item cost: one image, or the characters of a
/// narration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaUnits {
    /// Images made.
    pub images: i64,
    /// Characters spoken.
    pub speech_characters: i64,
}

/// Adds a generated media item's units to its day's row, in `tx` (the
/// transaction that makes the item ready: counted once, with it).
pub async fn add_media(
    tx: &mut sqlx::PgConnection,
    session_id: Uuid,
    user_id: &str,
    provider: &str,
    model: &str,
    units: MediaUnits,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO usage_daily AS u (session_id, day, user_id, provider, model, images,
                                       speech_characters)
         VALUES ($1, (now() AT TIME ZONE 'UTC')::date, $2, $3, $4, $5, $6)
         ON CONFLICT (session_id, day, user_id, provider, model) DO UPDATE
         SET images = u.images + EXCLUDED.images,
             speech_characters = u.speech_characters + EXCLUDED.speech_characters",
    )
    .bind(session_id)
    .bind(user_id)
    .bind(provider)
    .bind(model)
    .bind(units.images)
    .bind(units.speech_characters)
    .execute(tx)
    .await?;
    Ok(())
}

/// Sums the usage `filter` selects: totals, by day, by model.
pub async fn report(pool: &PgPool, filter: &Filter) -> sqlx::Result<Report> {
    let totals_sql = format!("SELECT {SUMS} FROM usage_daily WHERE {WHERE}");
    let days_sql =
        format!("SELECT day, {SUMS} FROM usage_daily WHERE {WHERE} GROUP BY day ORDER BY day");
    let models_sql = format!(
        "SELECT provider, model, {SUMS} FROM usage_daily WHERE {WHERE}
         GROUP BY provider, model ORDER BY provider, model"
    );
    let totals: Totals = select(&totals_sql, filter).fetch_one(pool).await?;
    let days: Vec<Day> = select(&days_sql, filter).fetch_all(pool).await?;
    let models: Vec<Model> = select(&models_sql, filter).fetch_all(pool).await?;
    Ok(Report {
        totals,
        days,
        models,
    })
}

/// Who spent the most of what `filter` selects: up to [`TOP`] users, or
/// sessions (`by_session`), by tokens then images, most first.
pub async fn top(pool: &PgPool, filter: &Filter, by_session: bool) -> sqlx::Result<Vec<Share>> {
    let key = if by_session {
        "session_id::text"
    } else {
        "user_id"
    };
    let sql = format!(
        "SELECT {key} AS id, {SUMS} FROM usage_daily WHERE {WHERE}
         GROUP BY 1
         ORDER BY sum(prompt_tokens + completion_tokens) DESC, sum(images) DESC,
                  sum(speech_characters) DESC, 1
         LIMIT {TOP}"
    );
    select(&sql, filter).fetch_all(pool).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_a_round_sums_tokens_and_keeps_who_answered() {
        let mut usage = TokenUsage {
            provider: "openai".into(),
            model: "m".into(),
            prompt_tokens: 10,
            completion_tokens: 2,
            limiter_wait_ms: 0,
            estimated: false,
        };
        usage.add(&TokenUsage {
            provider: "openai".into(),
            model: "m".into(),
            prompt_tokens: 15,
            completion_tokens: 7,
            limiter_wait_ms: 0,
            estimated: true,
        });
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (25, 9));
        assert_eq!(usage.provider, "openai");
        assert!(
            usage.estimated,
            "one estimated round makes the sum an estimate"
        );
    }
}
