#!/usr/bin/env bash
# Builds, on this (Debian) machine, what scripts/gpu_check.sh runs on a lent
# GPU machine: that machine has the CUDA toolkit, the driver, PyTorch (whose
# wheels carry libnccl.so.2) and Python, but none of shardlm's Debian
# packages (OpenMPI, yaml-cpp, fmt, oneDNN, PCRE2, utf8proc) and no network.
#
#   scripts/gpu_bundle.sh [BUNDLE_DIR]      (default gpu-bundle/, in .gitignore)
#
# The bundle is BUNDLE_DIR/shardlm-gpu.tar.xz (xz: oneDNN alone is 38 MB
# uncompressed) and BUNDLE_DIR/manifest.txt; gpu_check.sh unpacks it to
# /tmp/shardlm-gpu. Inside:
#   bin/   shardlm, libshardlm_cuda.so (beside shardlm: --backend cuda loads it
#          from there), shardlm_gpu_tests, shardlm_nccl_tests; stripped
#   lib/   the shared libraries they (and mpirun) need that are not glibc,
#          libstdc++/libgcc or CUDA's (toolkit, driver, NCCL: found there)
#   ompi/  OpenMPI 4.1's mpirun (orterun), the MCA components whose own
#          libraries are all in lib/, and its help texts; gpu_check.sh sets
#          OPAL_PREFIX=ompi so the relocated OpenMPI finds them
#   pmix/  PMIx's components and help texts (PMIX_PREFIX=pmix,
#          PMIX_MCA_mca_base_component_path=pmix/lib/pmix)
#   manifest.txt  what is in it and where each file came from
#
# Built in BUILD_DIR (default build-gpu/) with SHARDLM_NATIVE=OFF and
# -march=x86-64-v4: the GPU machine's CPU is not this one, and -march=native
# code could stop there with an illegal instruction. The CPU kernels need
# AVX-512 F/BW (x86-64-v4), which the host CPUs of H100/H200 machines have
# (Sapphire/Emerald Rapids, Genoa, Turin); gpu_check.sh checks. CUDA code for
# sm_90 (H100/H200) only.
# Binaries built on Debian 12 (glibc 2.36, libstdc++ of GCC 12) run on a
# newer glibc and libstdc++ (the GPU image is Ubuntu 24.04: glibc 2.39).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUNDLE=${1:-$ROOT/gpu-bundle}
BUILD_DIR=${BUILD_DIR:-$ROOT/build-gpu}
JOBS=${JOBS:-1}
# The working tree travels with the bundle; both must fit in 64 MiB.
LIMIT_MIB=64

if [ -f /work/ccache.env ]; then
  # shellcheck disable=SC1091
  source /work/ccache.env
  export CCACHE_BASEDIR CCACHE_DIR
fi
launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
fi
# BUNDLE_ONLY=1 bundles BUILD_DIR as it is (a build whose flags you chose).
if [ "${BUNDLE_ONLY:-0}" != 1 ]; then
  cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DSHARDLM_NATIVE=OFF \
    -DCMAKE_C_FLAGS=-march=x86-64-v4 -DCMAKE_CXX_FLAGS=-march=x86-64-v4 \
    -DCMAKE_CUDA_ARCHITECTURES=90 "${launcher[@]}" >/dev/null
  cmake --build "$BUILD_DIR" -j"$JOBS" \
    --target shardlm shardlm_cuda shardlm_gpu_tests shardlm_nccl_tests
fi

OUT_DIR=$BUNDLE
BUNDLE=$(mktemp -d)/shardlm-gpu  # staged here, packed into OUT_DIR at the end
trap 'rm -rf "$(dirname "$BUNDLE")"' EXIT
mkdir -p "$BUNDLE/bin" "$BUNDLE/lib"
manifest="$BUNDLE/manifest.txt"
: >"$manifest"
add() {  # add SOURCE DEST_DIR: copy, strip when an ELF file, record
  install -m 755 "$1" "$2/"
  if file -b "$1" | grep -q ELF; then strip --strip-unneeded "$2/$(basename "$1")"; fi
  echo "$2/$(basename "$1") <- $1" | sed "s|$BUNDLE/||" >>"$manifest"
}
for f in shardlm libshardlm_cuda.so tests/shardlm_gpu_tests tests/shardlm_nccl_tests; do
  add "$BUILD_DIR/$f" "$BUNDLE/bin"
done

# What the GPU machine has: glibc, the C++ runtime, CUDA (toolkit, driver,
# and NCCL from PyTorch's wheels). Everything else that ldd names travels.
system_lib='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libresolv|libutil|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas|libcublasLt|libnccl|libnvidia-.*)\.so'
bundle_deps() {  # bundle_deps FILE...: copy what they need into lib/ (once)
  ldd "$@" 2>/dev/null | awk '/=>/ {print $1, $3}' | sort -u | while read -r name path; do
    if [[ $name =~ $system_lib ]]; then continue; fi
    if [ "$path" = "not" ]; then echo "gpu_bundle: $name not found here" >&2; exit 1; fi
    [ -e "$BUNDLE/lib/$name" ] || add "$path" "$BUNDLE/lib"
  done
}
bundle_deps "$BUNDLE"/bin/*

# OpenMPI's mpirun for 2 ranks on one machine. Debian configured it with
# prefix /usr: OPAL_PREFIX=<bundle>/ompi moves every directory below the
# prefix (components in lib/x86_64-linux-gnu/openmpi/lib/openmpi3, help in
# share/openmpi). Only components whose libraries are all here come along
# (UCX, libfabric, PSM, verbs and OpenSHMEM stay behind: one machine needs
# shared memory and TCP), so OpenMPI has nothing to complain about.
ompi_components=$(ompi_info --path pkglibdir --parsable | sed 's/.*://')
ompi_help=$(ompi_info --path pkgdatadir --parsable | sed 's/.*://')
ompi_dest="$BUNDLE/ompi"
mkdir -p "$ompi_dest/bin" "$ompi_dest/${ompi_components#/usr/}" "$ompi_dest/${ompi_help#/usr/}"
add "$(readlink -f "$(command -v orterun)")" "$ompi_dest/bin"
ln -s orterun "$ompi_dest/bin/mpirun"
bundle_deps "$ompi_dest/bin/orterun"
allowed_dep='^(libmpi|libopen-rte|libopen-pal|libhwloc|libevent_core-2\.1|libevent_pthreads-2\.1|libudev|libz|libOpenCL|libpmix|libmunge|libnuma|libmca_common_sm|libmca_common_monitoring|libmca_common_ompio)\.so'
skipped=()
for component in "$ompi_components"/*.so; do
  keep=1
  while read -r name; do
    if [[ $name =~ $system_lib || $name =~ $allowed_dep ]]; then continue; fi
    keep=0
  done < <(ldd "$component" | awk '/=>/ {print $1}')
  if [ $keep = 1 ]; then
    add "$component" "$ompi_dest/${ompi_components#/usr/}"
    bundle_deps "$component"
  else
    skipped+=("$(basename "$component" .so)")
  fi
done
cp "$ompi_help"/*.txt "$ompi_dest/${ompi_help#/usr/}/"
echo "ompi/${ompi_help#/usr/}/*.txt <- $ompi_help" >>"$manifest"
echo "OpenMPI components left behind (libraries not bundled): ${skipped[*]}" >>"$manifest"

# PMIx (OpenMPI's launch protocol) keeps components and help of its own.
pmix_prefix=/usr/lib/x86_64-linux-gnu/pmix2
if [ -d "$pmix_prefix" ]; then
  mkdir -p "$BUNDLE/pmix/lib/pmix" "$BUNDLE/pmix/share"
  for component in "$pmix_prefix"/lib/pmix/*.so; do
    add "$component" "$BUNDLE/pmix/lib/pmix"
    bundle_deps "$component"
  done
  cp -r "$pmix_prefix/share/pmix" "$BUNDLE/pmix/share/"
  cp "$pmix_prefix/share/pmix-mca-params.conf" "$BUNDLE/pmix/share/" 2>/dev/null || true
  echo "pmix/share/pmix <- $pmix_prefix/share/pmix" >>"$manifest"
fi

# The GPU tests know their source directory by this path (SHARDLM_SOURCE_DIR).
echo "source_dir=$ROOT" >"$BUNDLE/bundle.env"
echo "largest files (KiB, uncompressed):" >>"$manifest"
du -sk "$BUNDLE"/lib/* "$BUNDLE"/bin/* | sort -rn | head -8 | sed "s|$BUNDLE/||" >>"$manifest"
rm -rf "$OUT_DIR"
mkdir -p "$OUT_DIR"
tar -C "$(dirname "$BUNDLE")" -cJf "$OUT_DIR/shardlm-gpu.tar.xz" shardlm-gpu
cp "$manifest" "$OUT_DIR/manifest.txt"

# The size that travels: the bundle plus the tracked and untracked-not-ignored tree.
raw_kib=$(du -sk "$BUNDLE" | cut -f1)
bundle_kib=$(du -sk "$OUT_DIR" | cut -f1)
tree_kib=$(cd "$ROOT" && git ls-files -co --exclude-standard -z | du -ck --files0-from=- 2>/dev/null | tail -1 | cut -f1)
total_mib=$(((bundle_kib + tree_kib + 1023) / 1024))
echo "bundle: $((bundle_kib / 1024)) MiB packed ($((raw_kib / 1024)) MiB unpacked); working tree: $((tree_kib / 1024)) MiB; together $total_mib MiB of $LIMIT_MIB" | tee -a "$OUT_DIR/manifest.txt"
if [ "$total_mib" -gt "$LIMIT_MIB" ]; then
  echo "gpu_bundle: $total_mib MiB travel, over the $LIMIT_MIB MiB limit" >&2
  exit 1
fi
