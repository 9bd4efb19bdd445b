//! Hostile documents built on purpose: PDFs whose form XObjects draw each other in a ring,
//! decompression bombs, deep HTML (the hostile-input, fuzz and cluster suites share them);
//! and the process helpers that find and signal a server's parser child.

/// A PDF from its objects (numbered from 1), with a correct cross-reference table.
pub fn pdf(objects: &[Vec<u8>]) -> Vec<u8> {
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, body) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend(body);
        out.extend(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
    for o in offsets {
        out.extend(format!("{o:010} 00000 n \n").as_bytes());
    }
    out.extend(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

pub fn stream(dict: &str, content: &[u8]) -> Vec<u8> {
    let mut s = format!("<< {dict} /Length {} >>\nstream\n", content.len()).into_bytes();
    s.extend(content);
    s.extend(b"\nendstream");
    s
}

pub fn page_tree(page: &str) -> Vec<Vec<u8>> {
    vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        format!("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] {page} >>").into_bytes(),
    ]
}

/// A page that draws form XObject /X0, which draws itself.
pub fn xobject_cycle() -> Vec<u8> {
    xobject_ring(1)
}

/// A page that draws form /X0, which draws /X1, …, and the last draws /X0 again.
pub fn xobject_ring(forms: usize) -> Vec<u8> {
    let forms = forms.max(1);
    let mut objs = page_tree("/Resources << /XObject << /X0 5 0 R >> >> /Contents 4 0 R");
    objs.push(stream("", b"q /X0 Do Q"));
    for i in 0..forms {
        let next = 5 + (i + 1) % forms;
        let dict = format!(
            "/Type /XObject /Subtype /Form /BBox [0 0 10 10] /Resources << /XObject << /X0 {next} 0 R >> >>"
        );
        objs.push(stream(&dict, b"/X0 Do"));
    }
    pdf(&objs)
}

/// A page whose content stream inflates from a few KiB to 256 MiB.
pub fn decompression_bomb() -> Vec<u8> {
    bomb(256)
}

/// A page whose content stream inflates to `mib` MiB of spaces.
pub fn bomb(mib: usize) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![b' '; 1 << 20];
    for _ in 0..mib {
        z.write_all(&zeros).unwrap();
    }
    let deflated = z.finish().unwrap();
    let mut objs = page_tree("/Contents 4 0 R");
    objs.push(stream("/Filter /FlateDecode", &deflated));
    pdf(&objs)
}

/// About 2.5 MB of nested elements around one sentence.
pub fn deep_html() -> Vec<u8> {
    let depth = 210_000;
    format!(
        "<html><body>{}The nested answer is forty-two.{}</body></html>",
        "<div>".repeat(depth),
        "</div>".repeat(depth)
    )
    .into_bytes()
}

/// Processes whose parent is `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // "pid (comm) state ppid …": the comm may hold spaces, so split after the ')'.
            let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            after.split_whitespace().nth(1) == Some(&pid.to_string())
        })
        .collect()
}

pub fn signal(sig: &str, pid: u32) {
    let _ = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status();
}
