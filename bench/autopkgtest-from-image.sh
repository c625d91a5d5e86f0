#!/bin/sh
# Lays out the autopkgtest of a Docker image (e.g. sid's 6.0 in
# rdocker-test/ci-job:sid) on the host, as autopkgtest runs from its source
# tree: DEST/runner/autopkgtest with lib/ and virt/ beside it, so that it
# loads its own modules and not /usr/share/autopkgtest/lib.  The host's
# python3 and python3-debian run it.  Prints the path to give
# bench/parallel.py --autopkgtest.
#   bench/autopkgtest-from-image.sh rdocker-test/ci-job:sid target/autopkgtest-sid
set -eu
image=${1:?usage: $0 IMAGE DEST}
dest=${2:?usage: $0 IMAGE DEST}
cid=$(docker create "$image" true) || {
    echo "$0: cannot create a container of $image; ci/e2e-releases.sh builds the job images" >&2
    exit 1
}
trap 'docker rm -f "$cid" >/dev/null' EXIT
rm -rf "$dest"
mkdir -p "$dest/runner" "$dest/virt"
docker cp "$cid:/usr/bin/autopkgtest" "$dest/runner/autopkgtest"
docker cp "$cid:/usr/share/autopkgtest/." "$dest/share"
ln -s share/lib "$dest/lib"
ln -s share/setup-commands "$dest/setup-commands"
ln -s share/ssh-setup "$dest/ssh-setup"
# autopkgtest puts virt/ first on PATH: rdocker comes from the host's PATH.
for v in null ssh; do
    docker cp "$cid:/usr/bin/autopkgtest-virt-$v" "$dest/virt/" 2>/dev/null || true
done
version=$(docker run --rm --entrypoint dpkg-query "$image" -W -f '${Version}' autopkgtest 2>/dev/null || echo '?')
echo "$dest/runner/autopkgtest"
echo "$0: autopkgtest $version from $image" >&2
