//! What a red build's logs say: the brief view of a step's log (its error lines, with
//! context) and the build's first error line, which the build page, the API and notifications
//! all show.

use crate::db::{DbConn, builds};
use crate::error::AppError;

/// A red build's failure in one line, as Treeherder shows it: the first error line of the
/// first failed step's log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FirstError {
    /// The step, numbered from 1 as people read it.
    pub step: i32,
    pub step_name: String,
    /// Its line number in that step's log.
    pub line: u64,
    pub text: String,
}

/// The first error of a build whose steps are `steps` (none for a green build, or when no
/// line of the failed step's log looks like an error).
pub fn first_error(
    conn: &mut DbConn,
    build_id: i64,
    steps: &[crate::db::models::Step],
) -> Result<Option<FirstError>, AppError> {
    for s in steps.iter().filter(|s| matches!(s.result.as_str(), "failure" | "exception") && s.log_digest.is_some()) {
        let Some(b) = brief(conn, build_id, s.position)? else { continue };
        let hit = b.blocks.iter().flat_map(|bl| bl.lines.iter()).find(|l| l.kind == crate::logscan::Kind::Error);
        if let Some(l) = hit {
            return Ok(Some(FirstError {
                step: s.position + 1,
                step_name: s.name.clone(),
                line: l.number,
                text: l.text.chars().take(300).collect(),
            }));
        }
    }
    Ok(None)
}

/// The brief view of a step's log, decompressed as a stream: only the compressed bytes and
/// the lines of the brief are ever in memory, whatever the log's size.
pub fn brief(conn: &mut DbConn, build_id: i64, position: i32) -> Result<Option<crate::logscan::Brief>, AppError> {
    let Some((_size, compressed, _)) = builds::log(conn, build_id, position)? else {
        return Ok(None);
    };
    let decoder =
        zstd::stream::read::Decoder::new(compressed.as_slice()).map_err(|e| anyhow::anyhow!("corrupt log: {e}"))?;
    let brief =
        crate::logscan::scan(std::io::BufReader::new(decoder)).map_err(|e| anyhow::anyhow!("corrupt log: {e}"))?;
    Ok(Some(brief))
}
