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
//! Step 1 reads only rows that can match: the filter's top-level `and` terms that SQL can
//! decide exactly or loosely ([`Narrowing`]: `hw=`, `version=`, `id=`, `result=`, `online`,
//! `drifted`, and `label:K=V` as a pattern over the stored JSON) become a `WHERE` clause that
//! keeps every matching device and maybe a few more; core's filter then decides. The clause
//! only ever narrows the scan, never the answer.
//!
//! Ordering: the sort column (a missing value before any value), then the device id, both
//! reversed for [`SortDirection::Desc`]. Pages count from 1; a page past the end shows the last.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use ota_core::digest::Digest;
use ota_core::filter::{DeviceFacts, Field, Filter, Flag};
use serde::Deserialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::devices::{device_from_row, format_device_select};
use super::{Db, DbError, DeviceRecord, from_json, to_json};

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

/// A `WHERE` clause that keeps at least every device a filter matches: the conditions SQL
/// can check for the filter's top-level `and` terms, with their bound values.
///
/// | term | condition |
/// |---|---|
/// | `hw=V`, `version=V`, `id=V`, `result=V` | the column `= V` (exact), or `LIKE V` with each `*` as `%` |
/// | `online`, `drifted` | the column `<> 0` (exact) |
/// | `label:K=V` | `labels` or `server_labels` is `LIKE %"K":"V"%` (JSON as stored, `*` as `%`) |
/// | anything else (`!=`, `not`, `or`, `digest=`) | nothing: core decides |
///
/// `LIKE` conditions may keep more than the filter (a server label overrides a reported one;
/// SQLite's `LIKE` ignores ASCII case; `%` also matches across a JSON string's end): core's
/// evaluator still runs on every row read.
#[derive(Debug, Default, PartialEq, Eq)]
struct Narrowing {
    conditions: Vec<String>,
    values: Vec<String>,
}

impl Narrowing {
    fn of(filter: Option<&Filter>) -> Self {
        let mut n = Narrowing::default();
        if let Some(filter) = filter {
            n.add(filter);
        }
        n
    }

    fn add(&mut self, filter: &Filter) {
        match filter {
            Filter::And(a, b) => {
                self.add(a);
                self.add(b);
            }
            Filter::Flag(Flag::Online) => self.conditions.push("online <> 0".into()),
            Filter::Flag(Flag::Drifted) => self.conditions.push("drifted <> 0".into()),
            Filter::Compare {
                field,
                negated: false,
                value,
            } => {
                let column = match field {
                    Field::Id => "id",
                    Field::Hardware => "hardware_class",
                    Field::Version => "running_version",
                    Field::Result => "last_result",
                    Field::Label(key) => {
                        let pair = format!("{}:{}", to_json(key), to_json(value));
                        let pattern = format!("%{}%", like_pattern(&pair));
                        let reported = self.bind(pattern.clone());
                        let set = self.bind(pattern);
                        self.conditions.push(format!(
                            "(labels LIKE ${reported} ESCAPE '\\' \
                             OR server_labels LIKE ${set} ESCAPE '\\')"
                        ));
                        return;
                    }
                    _ => return,
                };
                if value.contains('*') {
                    let n = self.bind(like_pattern(value));
                    self.conditions
                        .push(format!("{column} LIKE ${n} ESCAPE '\\'"));
                } else {
                    let n = self.bind(value.clone());
                    self.conditions.push(format!("{column} = ${n}"));
                }
            }
            _ => {}
        }
    }

    /// Adds a bound value; its placeholder number.
    fn bind(&mut self, value: String) -> usize {
        self.values.push(value);
        self.values.len()
    }

    /// ` WHERE ...` or nothing.
    fn clause(&self) -> String {
        if self.conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.conditions.join(" AND "))
        }
    }
}

/// A `LIKE` pattern (escape character `\`) for a filter value: `%`, `_` and `\` stand for
/// themselves, the filter's wildcard `*` becomes `%`.
fn like_pattern(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '*' => out.push('%'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

impl Db {
    /// One page of the device list: matching devices counted, ordered and cut to `q`'s page;
    /// full rows only for the page (see the module doc).
    pub async fn device_page(&self, q: DevicePageQuery<'_>) -> Result<DevicePage, DbError> {
        let needs = Needs::of(&q);
        let narrowing = Narrowing::of(q.filter);
        let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM devices{}",
            needs.columns(),
            narrowing.clause()
        )));
        for value in &narrowing.values {
            query = query.bind(value.as_str());
        }
        let rows = query.fetch_all(&self.pool).await?;
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

    #[test]
    fn issue16_top_level_and_terms_narrow_the_scan() {
        let f =
            Filter::parse(r#"hw=gw-a and (label:site=site-7 and online) and not drifted"#).unwrap();
        let n = Narrowing::of(Some(&f));
        assert_eq!(
            n.conditions,
            [
                "hardware_class = $1",
                "(labels LIKE $2 ESCAPE '\\' OR server_labels LIKE $3 ESCAPE '\\')",
                "online <> 0",
            ]
        );
        assert_eq!(
            n.values,
            ["gw-a", r#"%"site":"site-7"%"#, r#"%"site":"site-7"%"#]
        );
        assert_eq!(n.clause().matches(" AND ").count(), 2);
    }

    #[test]
    fn issue16_like_wildcards_and_json_escapes_are_literal() {
        let f = Filter::parse(r#"label:k_1="50%\"x\\""#).unwrap();
        let n = Narrowing::of(Some(&f));
        // JSON writes `"50%\"x\\"`; every `%`, `_` and `\` of it is escaped for LIKE.
        assert_eq!(n.values[0], r#"%"k\_1":"50\%\\"x\\\\"%"#);
    }

    #[test]
    fn issue16_wildcards_become_like_patterns() {
        let f = Filter::parse("hw=gw-* and label:site=s_1* and version=1.*.0").unwrap();
        let n = Narrowing::of(Some(&f));
        assert_eq!(
            n.conditions,
            [
                "hardware_class LIKE $1 ESCAPE '\\'",
                "(labels LIKE $2 ESCAPE '\\' OR server_labels LIKE $3 ESCAPE '\\')",
                "running_version LIKE $4 ESCAPE '\\'",
            ]
        );
        assert_eq!(
            n.values,
            [
                "gw-%",
                r#"%"site":"s\_1%"%"#,
                r#"%"site":"s\_1%"%"#,
                "1.%.0"
            ]
        );
    }

    #[test]
    fn issue16_terms_sql_cannot_decide_leave_the_scan_whole() {
        for text in [
            "hw!=gw-a",
            "not online",
            "hw=gw-a or label:site=x",
            "digest=abc",
            "all",
        ] {
            let f = Filter::parse(text).unwrap();
            assert_eq!(Narrowing::of(Some(&f)), Narrowing::default(), "{text}");
        }
        assert_eq!(Narrowing::of(None).clause(), "");
    }

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
