//! `questboard admin quotas`: members' quotas and budgets as the
//! `/api/admin/quotas` routes show and change them. A change is in force
//! on every API process within `quotas::REFRESH`.

use anyhow::{Context as _, bail};
use questboard_core::quotas::{MAX_VALUE, Quota, Quotas, Values};
use sqlx::PgPool;

use super::operator;

/// `admin quotas set|reset` (none: list them).
#[derive(Debug, clap::Subcommand)]
pub enum QuotasCommand {
    /// Override a quota (0: no limit).
    Set {
        /// The quota (`user_turns_per_minute`, ...; `admin quotas` lists them).
        name: String,
        /// Its value.
        value: u64,
    },
    /// Put a quota back to its default (the environment's).
    Reset {
        /// The quota.
        name: String,
    },
}

/// Lists the quotas, or changes one and lists them.
pub(super) async fn run(
    pool: &PgPool,
    defaults: Values,
    command: Option<QuotasCommand>,
) -> anyhow::Result<()> {
    let quotas = Quotas::load(pool, defaults).await?;
    let known = |name: &str| {
        Quota::parse(name).with_context(|| {
            format!(
                "unknown quota {name:?}: {}",
                Quota::ALL.map(Quota::name).join(", ")
            )
        })
    };
    match command {
        None => {}
        Some(QuotasCommand::Set { name, value }) => {
            let quota = known(&name)?;
            if value > MAX_VALUE {
                bail!("a quota is at most {MAX_VALUE} (0: no limit)");
            }
            quotas.set(pool, quota, Some(value), &operator()).await?;
        }
        Some(QuotasCommand::Reset { name }) => {
            let quota = known(&name)?;
            quotas.set(pool, quota, None, &operator()).await?;
        }
    }
    println!(
        "{:<28} {:>15} {:>15} {:<11} by",
        "quota", "value", "default", "overridden"
    );
    for s in quotas.list(pool).await? {
        println!(
            "{:<28} {:>15} {:>15} {:<11} {}",
            s.name.name(),
            s.value,
            s.default,
            if s.overridden { "yes" } else { "no" },
            s.updated_by.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}
