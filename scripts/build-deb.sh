#!/usr/bin/env bash
# Builds the Debian package: target/debian/mcpmux_<version>-1_<arch>.deb (path printed last).
#
# One release build (`cargo build --release`), then the assets cargo-deb packages but Cargo
# does not build, generated into target/deb-assets/ from the sources of truth:
#   - the man page and shell completions, from the binary just built (`mcpmux man`,
#     `mcpmux completions SHELL`: the clap definitions);
#   - the systemd units, the repository's systemd/ units with the package's /usr/bin paths;
# then `cargo deb --no-build` (metadata: [package.metadata.deb] in Cargo.toml). Needs
# cargo-deb (`cargo install --locked cargo-deb --version 3.8.0`, as .ci/run does).
set -euo pipefail

root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root_dir"
command -v cargo-deb >/dev/null || { echo "build-deb: cargo-deb not found (cargo install --locked cargo-deb --version 3.8.0)" >&2; exit 1; }

cargo build --release --locked --bins
bin="${CARGO_TARGET_DIR:-target}/release/mcpmux"
assets=target/deb-assets
rm -rf "$assets"
mkdir -p "$assets/systemd" "$assets/completions"

"$bin" man | gzip -9n > "$assets/mcpmux.1.gz"
"$bin" completions bash > "$assets/completions/mcpmux"
"$bin" completions zsh > "$assets/completions/_mcpmux"
"$bin" completions fish > "$assets/completions/mcpmux.fish"

for unit in mcpmux.service mcpmux.socket mcpmux-admin.socket; do
    sed -e 's|/usr/local/bin/|/usr/bin/|g' "systemd/$unit" > "$assets/systemd/$unit"
done
# The package's unit must run the packaged binary; fail loudly if the source changed shape.
grep -q '^ExecStart=/usr/bin/mcpmux ' "$assets/systemd/mcpmux.service" \
    || { echo "build-deb: ExecStart of systemd/mcpmux.service is not /usr/local/bin/mcpmux" >&2; exit 1; }

deb=target/debian/mcpmux.deb
cargo deb --no-build --locked --fast --output "$deb"
echo "$deb"
