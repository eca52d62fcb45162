//! Human output: aligned columns like docker's (`text/tabwriter` with minwidth 10, padding 3).

/// Renders a header row and data rows as aligned columns; the last column is not padded.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let cols = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let widths: Vec<usize> = widths.into_iter().map(|w| (w + 3).max(10)).collect();
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().take(cols).enumerate() {
            line.push_str(cell);
            if i + 1 < cols {
                let pad = widths[i] - cell.chars().count();
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The first 12 characters of an id, as docker shows them.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_like_docker() {
        let rows = vec![
            vec![
                "7fca4eb8c647".into(),
                "bridge".into(),
                "bridge".into(),
                "local".into(),
            ],
            vec![
                "9f6ae26ccb82".into(),
                "a-longer-name".into(),
                "null".into(),
                "local".into(),
            ],
        ];
        let t = render(&["NETWORK ID", "NAME", "DRIVER", "SCOPE"], &rows);
        assert_eq!(
            t,
            "NETWORK ID     NAME            DRIVER    SCOPE\n\
             7fca4eb8c647   bridge          bridge    local\n\
             9f6ae26ccb82   a-longer-name   null      local\n"
        );
    }

    #[test]
    fn empty_table_is_just_the_header_and_empty_last_cells_leave_no_trailing_space() {
        assert_eq!(render(&["A", "B"], &[]), "A         B\n");
        assert_eq!(
            render(&["A", "B"], &[vec!["x".into(), String::new()]]),
            "A         B\nx\n"
        );
    }

    #[test]
    fn short_id_truncates_to_12() {
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
    }
}
