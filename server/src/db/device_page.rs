//! One page of the device registry, filtered and sorted, without loading every full row.
//!
//! A full device row carries the raw reported state (CBOR, decoded for `last_outcome`), power
//! and inventory JSON and a join on `transfers`: reading 100,000 of them to show 50 took seconds.
//! A page is read in two steps instead:
//!
//! 1. the *facts* of every device — only the columns the filter and the sort read (the id and
//!    the sort column without a filter; labels only when the filter names one) — evaluated with core's filter ([`ota_core::filter`], the one
//!    evaluator that rollout targets and flags use too) and ordered in memory, so SQLite and
//!    PostgreSQL order and match identically (no collation or `NULL`-ordering differences);
//! 2. the full rows of the page's devices only, by id.
//!
//! Ordering: the sort column (a missing value before any value), then the device id, both
//! reversed for [`SortDirection::Desc`]. Pages count from 1; a page past the end shows the last.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use ota_core::digest::Digest;
use ota_core::filter::{DeviceFacts, Filter};
use serde::Deserialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Db, DbError, DeviceRecord, device_from_row, format_device_select, from_json};

/// A sortable column of the device list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceSort {
    /// Device id.
    #[default]
    Id,
    /// Running version.
    Version,
    /// Hardware class.
    Class,
    /// Last update result.
    State,
    /// Last time heard of.
    LastSeen,
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SortDirection {
    /// Ascending.
    #[default]
    Asc,
    /// Descending.
    Desc,
}

/// Which page of which devices, in which order.
#[derive(Debug, Clone, Copy)]
pub struct DevicePageQuery<'a> {
    /// Only devices matching this filter (all when `None`).
    pub filter: Option<&'a Filter>,
    /// The column to order by.
    pub sort: DeviceSort,
    /// The direction.
    pub dir: SortDirection,
    /// The page, from 1 (clamped to the last page).
    pub page: usize,
    /// Devices per page (at least 1).
    pub page_size: usize,
}

/// One page of the device list.
#[derive(Debug)]
#[non_exhaustive]
pub struct DevicePage {
    /// Devices matching the filter.
    pub matched: usize,
    /// The page's devices, in order.
    pub devices: Vec<DeviceRecord>,
    /// The page shown, from 1.
    pub page: usize,
    /// Pages in all (at least 1).
    pub pages: usize,
}

/// What the filter and the sort read of one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Facts {
    id: String,
    hardware_class: Option<String>,
    running_version: Option<String>,
    running_digest: Option<String>,
    last_result: Option<String>,
    labels: BTreeMap<String, String>,
    server_labels: BTreeMap<String, String>,
    online: bool,
    drifted: bool,
    last_seen: i64,
}

impl DeviceFacts for Facts {
    fn id(&self) -> &str {
        &self.id
    }
    fn hardware_class(&self) -> Option<&str> {
        self.hardware_class.as_deref()
    }
    fn running_version(&self) -> Option<&str> {
        self.running_version.as_deref()
    }
    fn running_digest(&self) -> Option<Digest> {
        self.running_digest.as_deref().and_then(|d| d.parse().ok())
    }
    fn last_result(&self) -> Option<&str> {
        self.last_result.as_deref()
    }
    fn label(&self, key: &str) -> Option<&str> {
        self.server_labels
            .get(key)
            .or_else(|| self.labels.get(key))
            .map(String::as_str)
    }
    fn online(&self) -> bool {
        self.online
    }
    fn drifted(&self) -> bool {
        self.drifted
    }
}

impl DeviceSort {
    fn compare(self, a: &Facts, b: &Facts) -> Ordering {
        let by = match self {
            DeviceSort::Id => Ordering::Equal,
            DeviceSort::Version => a.running_version.cmp(&b.running_version),
            DeviceSort::Class => a.hardware_class.cmp(&b.hardware_class),
            DeviceSort::State => a.last_result.cmp(&b.last_result),
            DeviceSort::LastSeen => a.last_seen.cmp(&b.last_seen),
        };
        by.then_with(|| a.id.cmp(&b.id))
    }
}

/// Where a page of `matched` devices starts and ends: (page, pages, start, end).
fn bounds(matched: usize, page: usize, page_size: usize) -> (usize, usize, usize, usize) {
    let page_size = page_size.max(1);
    let pages = matched.div_ceil(page_size).max(1);
    let page = page.clamp(1, pages);
    let start = ((page - 1) * page_size).min(matched);
    let end = (start + page_size).min(matched);
    (page, pages, start, end)
}

/// Filters `facts`, then orders and cuts them to the page `q` asks for: (matched, page, pages,
/// the page's facts in order). Only the page is fully sorted.
pub(super) fn select_page(
    mut facts: Vec<Facts>,
    q: &DevicePageQuery<'_>,
) -> (usize, usize, usize, Vec<Facts>) {
    if let Some(filter) = q.filter {
        facts.retain(|d| filter.matches(d));
    }
    let matched = facts.len();
    let (page, pages, start, end) = bounds(matched, q.page, q.page_size);
    let (sort, dir) = (q.sort, q.dir);
    let cmp = |a: &Facts, b: &Facts| match dir {
        SortDirection::Asc => sort.compare(a, b),
        SortDirection::Desc => sort.compare(b, a),
    };
    if start == end {
        facts.clear();
    } else {
        if start > 0 {
            facts.select_nth_unstable_by(start, cmp);
            facts.drain(..start);
        }
        let len = end - start;
        if len < facts.len() {
            facts.select_nth_unstable_by(len - 1, cmp);
            facts.truncate(len);
        }
        facts.sort_by(cmp);
    }
    (matched, page, pages, facts)
}

/// Which columns a page needs: the sort column always, the filter's when there is one.
#[derive(Debug, Clone, Copy)]
struct Needs {
    sort: DeviceSort,
    filter: bool,
    labels: bool,
}

impl Needs {
    fn of(q: &DevicePageQuery<'_>) -> Self {
        Needs {
            sort: q.sort,
            filter: q.filter.is_some(),
            labels: q.filter.is_some_and(Filter::reads_labels),
        }
    }

    fn columns(self) -> String {
        let mut columns = vec!["id"];
        if self.filter {
            columns.extend([
                "hardware_class",
                "running_version",
                "running_digest",
                "last_result",
                "online",
                "drifted",
            ]);
        }
        if self.labels {
            columns.extend(["labels", "server_labels"]);
        }
        let sort = match self.sort {
            DeviceSort::Id => None,
            DeviceSort::Version => Some("running_version"),
            DeviceSort::Class => Some("hardware_class"),
            DeviceSort::State => Some("last_result"),
            DeviceSort::LastSeen => Some("last_seen"),
        };
        if let Some(sort) = sort.filter(|c| !columns.contains(c)) {
            columns.push(sort);
        }
        columns.join(", ")
    }

    fn facts(self, row: &AnyRow) -> Result<Facts, DbError> {
        let text = |col: &str, wanted: bool| -> Result<Option<String>, DbError> {
            Ok(if wanted { row.try_get(col)? } else { None })
        };
        let flag = |col: &str| -> Result<bool, DbError> {
            Ok(self.filter && row.try_get::<i64, _>(col)? != 0)
        };
        let labels = |col: &str| -> Result<BTreeMap<String, String>, DbError> {
            if self.labels {
                from_json(&row.try_get::<String, _>(col)?, col)
            } else {
                Ok(BTreeMap::new())
            }
        };
        Ok(Facts {
            id: row.try_get("id")?,
            hardware_class: text(
                "hardware_class",
                self.filter || self.sort == DeviceSort::Class,
            )?,
            running_version: text(
                "running_version",
                self.filter || self.sort == DeviceSort::Version,
            )?,
            running_digest: text("running_digest", self.filter)?,
            last_result: text("last_result", self.filter || self.sort == DeviceSort::State)?,
            labels: labels("labels")?,
            server_labels: labels("server_labels")?,
            online: flag("online")?,
            drifted: flag("drifted")?,
            last_seen: if self.sort == DeviceSort::LastSeen {
                row.try_get("last_seen")?
            } else {
                0
            },
        })
    }
}

impl Db {
    /// One page of the device list: matching devices counted, ordered and cut to `q`'s page;
    /// full rows only for the page (see the module doc).
    pub async fn device_page(&self, q: DevicePageQuery<'_>) -> Result<DevicePage, DbError> {
        let needs = Needs::of(&q);
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM devices",
            needs.columns()
        )))
        .fetch_all(&self.pool)
        .await?;
        let facts = rows
            .iter()
            .map(|row| needs.facts(row))
            .collect::<Result<Vec<_>, _>>()?;
        drop(rows);
        let (matched, page, pages, shown) = select_page(facts, &q);
        let devices = self
            .devices_by_id(shown.iter().map(|f| f.id.as_str()))
            .await?;
        Ok(DevicePage {
            matched,
            devices,
            page,
            pages,
        })
    }

    /// The full rows of `ids`, in the order given (ids without a row are left out).
    async fn devices_by_id<'a>(
        &self,
        ids: impl ExactSizeIterator<Item = &'a str> + Clone,
    ) -> Result<Vec<DeviceRecord>, DbError> {
        if ids.len() == 0 {
            return Ok(Vec::new());
        }
        let placeholders = (1..=ids.len())
            .map(|n| format!("${n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format_device_select(&format!("WHERE devices.id IN ({placeholders})"));
        let mut query = sqlx::query(sql);
        for id in ids.clone() {
            query = query.bind(id);
        }
        let mut by_id: BTreeMap<String, DeviceRecord> = query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| device_from_row(row).map(|d| (d.id.clone(), d)))
            .collect::<Result<_, _>>()?;
        Ok(ids.filter_map(|id| by_id.remove(id)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str, version: Option<&str>, last_seen: i64) -> Facts {
        Facts {
            id: id.into(),
            running_version: version.map(Into::into),
            last_seen,
            ..Facts::default()
        }
    }

    fn query(
        filter: Option<&Filter>,
        sort: DeviceSort,
        dir: SortDirection,
        page: usize,
    ) -> DevicePageQuery<'_> {
        DevicePageQuery {
            filter,
            sort,
            dir,
            page,
            page_size: 2,
        }
    }

    fn ids(facts: &[Facts]) -> Vec<&str> {
        facts.iter().map(|f| f.id.as_str()).collect()
    }

    #[test]
    fn pages_are_sorted_cut_and_clamped() {
        let fleet = vec![
            device("d", Some("1.0"), 4),
            device("b", Some("2.0"), 9),
            device("a", None, 1),
            device("c", Some("1.0"), 7),
            device("e", Some("2.0"), 2),
        ];
        let page = |sort, dir, page| {
            let (matched, page, pages, shown) =
                select_page(fleet.clone(), &query(None, sort, dir, page));
            (matched, page, pages, ids(&shown).join(""))
        };
        assert_eq!(
            page(DeviceSort::Id, SortDirection::Asc, 1),
            (5, 1, 3, "ab".into())
        );
        assert_eq!(
            page(DeviceSort::Id, SortDirection::Asc, 3),
            (5, 3, 3, "e".into())
        );
        assert_eq!(
            page(DeviceSort::Id, SortDirection::Asc, 99),
            (5, 3, 3, "e".into()),
            "clamped"
        );
        assert_eq!(
            page(DeviceSort::Id, SortDirection::Asc, 0),
            (5, 1, 3, "ab".into()),
            "clamped"
        );
        // A missing version sorts first; ties by id.
        assert_eq!(page(DeviceSort::Version, SortDirection::Asc, 1).3, "ac");
        assert_eq!(page(DeviceSort::Version, SortDirection::Asc, 2).3, "db");
        assert_eq!(page(DeviceSort::Version, SortDirection::Desc, 1).3, "eb");
        assert_eq!(page(DeviceSort::LastSeen, SortDirection::Desc, 1).3, "bc");
    }

    #[test]
    fn the_filter_is_core_s_and_counts_before_the_cut() {
        let mut fleet = vec![device("a", Some("1.0"), 0), device("b", Some("2.0"), 0)];
        fleet[1].server_labels = [("site".to_string(), "x".to_string())].into();
        fleet.push(device("c", Some("2.0"), 0));
        let filter = Filter::parse("version=2.* and not label:site=x").unwrap();
        let (matched, _, pages, shown) = select_page(
            fleet,
            &query(Some(&filter), DeviceSort::Id, SortDirection::Asc, 1),
        );
        assert_eq!((matched, pages, ids(&shown)), (1, 1, vec!["c"]));
    }

    #[test]
    fn an_empty_fleet_is_one_empty_page() {
        let (matched, page, pages, shown) = select_page(
            Vec::new(),
            &query(None, DeviceSort::Id, SortDirection::Asc, 3),
        );
        assert_eq!((matched, page, pages, shown.len()), (0, 1, 1, 0));
    }
}
