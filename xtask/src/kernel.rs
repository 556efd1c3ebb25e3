//! Kernels the socket path is checked on under QEMU. A name maps to a recipe: which package
//! holds the kernel and which modules the guest needs before it can mount its root. Adding
//! a kernel is one entry in `RECIPES`. Fetched kernels are kept under `target/vm/kernels/`
//! with only what the guest boots: the image, the modules in load order, the config.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::debian;

pub struct Recipe {
    pub name: &'static str,
    /// Who runs this kernel: why it is worth checking.
    pub used_by: &'static str,
    /// The Debian package `{prefix}N{suffix}`. The newest ABI N apt knows is taken: the
    /// archive drops old ABIs, so a pinned one would stop downloading.
    pub package_prefix: &'static str,
    pub package_suffix: &'static str,
    /// Modules the guest loads to mount the host's root over virtio 9p. What they depend on
    /// is read from each one's modinfo (the packages ship no modules.dep); those built into
    /// the kernel are skipped.
    pub root_modules: &'static [&'static str],
    /// Modules the tests need that the guest cannot load on demand (it has no module tree
    /// of its own): veth pairs, and the clsact qdisc with its BPF classifier for the TC
    /// path (kernels without TCX).
    pub test_modules: &'static [&'static str],
}

impl Recipe {
    /// Every module the guest loads, root first.
    fn modules(&self) -> Vec<&'static str> {
        self.root_modules
            .iter()
            .chain(self.test_modules)
            .copied()
            .collect()
    }
}

pub const RECIPES: &[Recipe] = &[Recipe {
    name: "debian-6.1",
    used_by: "Debian 12 (Amazon Linux 2023 also runs 6.1)",
    package_prefix: "linux-image-6.1.0-",
    package_suffix: "-amd64",
    root_modules: &["virtio_pci", "9pnet_virtio", "9p"],
    test_modules: &["veth", "sch_ingress", "cls_bpf", "cls_u32"],
}];

pub fn recipe(name: &str) -> Result<&'static Recipe> {
    RECIPES.iter().find(|r| r.name == name).with_context(|| {
        let known: Vec<&str> = RECIPES.iter().map(|r| r.name).collect();
        format!(
            "no kernel recipe named {name:?}; known: {}",
            known.join(", ")
        )
    })
}

pub struct Kernel {
    pub package: String,
    pub version: String,
    /// `uname -r` of the guest, e.g. `6.1.0-48-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// In load order.
    pub modules: Vec<PathBuf>,
}

const DESCRIPTION: &str = "kernel.txt";

/// The recipe's kernel under `vm_dir`, downloaded and trimmed first if it is not there yet.
pub fn fetch(recipe: &Recipe, vm_dir: &Path) -> Result<Kernel> {
    let home = vm_dir.join("kernels").join(recipe.name);
    let package = debian::with_fresh_lists_on_failure(|| {
        let package = debian::newest_numbered(recipe.package_prefix, recipe.package_suffix)?;
        if !prepared(recipe, &home.join(&package)) {
            unpack(recipe, &package, &home, &home.join(&package))?;
        }
        Ok(package)
    })?;
    // Older ABIs of the same recipe are no longer used: a newer one replaced them.
    for entry in fs::read_dir(&home)?.filter_map(Result::ok) {
        if entry.file_name() != package.as_str() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    let dir = home.join(&package);
    load(&dir).with_context(|| format!("reading the kernel in {}", dir.display()))
}

/// Whether `dir` holds the kernel prepared with the recipe's modules as they are now.
fn prepared(recipe: &Recipe, dir: &Path) -> bool {
    fs::read_to_string(dir.join(DESCRIPTION))
        .is_ok_and(|text| text.lines().nth(3) == Some(recipe.modules().join(" ").as_str()))
}

fn load(dir: &Path) -> Result<Kernel> {
    let text = fs::read_to_string(dir.join(DESCRIPTION))?;
    let mut lines = text.lines().map(str::to_string);
    let (Some(package), Some(version), Some(release)) = (lines.next(), lines.next(), lines.next())
    else {
        bail!("{DESCRIPTION} is incomplete");
    };
    let mut modules: Vec<PathBuf> = fs::read_dir(dir.join("modules"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    // Named NN-name.ko: the order is the load order.
    modules.sort();
    Ok(Kernel {
        package,
        version,
        release,
        vmlinuz: dir.join("vmlinuz"),
        modules,
    })
}

/// Downloads and unpacks the package, then keeps only the image, config and the modules the
/// guest loads (the unpacked package is ~400 MB, the kept part ~15 MB).
fn unpack(recipe: &Recipe, package: &str, home: &Path, dir: &Path) -> Result<()> {
    let scratch = home.join(".download");
    let unpacked = home.join(".unpacked");
    let staging = home.join(".staging");
    for old in [&scratch, &unpacked, &staging] {
        let _ = fs::remove_dir_all(old);
    }
    let result = (|| {
        let version = debian::download_unpacked(package, &scratch, &unpacked)?;
        let boot = unpacked.join("boot");
        let vmlinuz = only_entry(&boot, "vmlinuz-")?;
        let release = vmlinuz
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .context("vmlinuz has no release in its name")?
            .to_string();
        let tree = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|base| unpacked.join(base).join(&release))
            .find(|p| p.is_dir())
            .with_context(|| format!("{package} has no lib/modules/{release}"))?;
        let order = load_order(&recipe.modules(), &tree)?;
        fs::create_dir_all(staging.join("modules"))?;
        fs::copy(&vmlinuz, staging.join("vmlinuz"))?;
        fs::copy(
            boot.join(format!("config-{release}")),
            staging.join("config"),
        )?;
        for (i, (name, path)) in order.iter().enumerate() {
            fs::copy(path, staging.join(format!("modules/{i:02}-{name}.ko")))?;
        }
        fs::write(
            staging.join(DESCRIPTION),
            format!(
                "{package}\n{version}\n{release}\n{}\n",
                recipe.modules().join(" ")
            ),
        )?;
        // A kernel prepared with other modules is replaced whole.
        let _ = fs::remove_dir_all(dir);
        fs::rename(&staging, dir)?;
        anyhow::Ok(())
    })();
    for old in [&scratch, &unpacked, &staging] {
        let _ = fs::remove_dir_all(old);
    }
    result.with_context(|| format!("preparing {package} for {}", recipe.name))
}

fn only_entry(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let mut found = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        });
    let first = found
        .next()
        .with_context(|| format!("no {prefix}* in {}", dir.display()))?;
    if found.next().is_some() {
        bail!("more than one {prefix}* in {}", dir.display());
    }
    Ok(first)
}

/// The modules to load for `wanted`, dependencies first, with their files in `tree`.
fn load_order(wanted: &[&str], tree: &Path) -> Result<Vec<(String, PathBuf)>> {
    let builtin: BTreeSet<String> = fs::read_to_string(tree.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| module_name(Path::new(line)))
        .collect();
    let mut files = BTreeMap::new();
    index_modules(&tree.join("kernel"), &mut files)?;
    let order = dependency_order(wanted, |name| {
        if builtin.contains(name) {
            return Ok(None);
        }
        let path = files
            .get(name)
            .with_context(|| format!("module {name} is neither built in nor shipped"))?;
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Some(modinfo_depends(&bytes)))
    })?;
    Ok(order
        .into_iter()
        .map(|name| {
            let path = files[&name].clone();
            (name, path)
        })
        .collect())
}

fn index_modules(dir: &Path, files: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index_modules(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "ko") {
            if let Some(name) = module_name(&path) {
                files.insert(name, path);
            }
        } else if path.to_string_lossy().contains(".ko.") {
            // busybox insmod in the guest takes plain ELF only.
            bail!(
                "{} is compressed; only uncompressed modules are supported",
                path.display()
            );
        }
    }
    Ok(())
}

/// The kernel's name for a module file: no extension, dashes as underscores.
fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = file.split('.').next()?;
    (!stem.is_empty()).then(|| stem.replace('-', "_"))
}

/// The `depends=` entry of a module's `.modinfo` section (NUL-separated key=value strings).
fn modinfo_depends(module: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(start) = module.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let value = &module[start + KEY.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect()
}

/// Dependencies before dependents, each module once. `depends` gives a module's
/// dependencies, or None when it is built in (nothing to load).
fn dependency_order(
    wanted: &[&str],
    mut depends: impl FnMut(&str) -> Result<Option<Vec<String>>>,
) -> Result<Vec<String>> {
    fn visit(
        name: &str,
        depends: &mut dyn FnMut(&str) -> Result<Option<Vec<String>>>,
        path: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if order.iter().any(|n| n == name) {
            return Ok(());
        }
        if path.iter().any(|n| n == name) {
            bail!("modules depend on each other in a cycle: {path:?} -> {name}");
        }
        let Some(deps) = depends(name)? else {
            return Ok(());
        };
        path.push(name.to_string());
        for dep in &deps {
            visit(dep, depends, path, order)?;
        }
        path.pop();
        order.push(name.to_string());
        Ok(())
    }
    let mut order = Vec::new();
    for name in wanted {
        visit(name, &mut depends, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_load_first_once_and_builtins_not_at_all() {
        let graph: BTreeMap<&str, Option<&[&str]>> = [
            ("9p", Some(&["9pnet", "fscache", "netfs"][..])),
            ("9pnet", Some(&[][..])),
            ("fscache", Some(&["netfs"][..])),
            ("netfs", Some(&[][..])),
            ("9pnet_virtio", Some(&["virtio", "9pnet"][..])),
            ("virtio", None),
        ]
        .into();
        let order = dependency_order(&["9pnet_virtio", "9p"], |name| {
            Ok(graph[name].map(|deps| deps.iter().map(|d| d.to_string()).collect()))
        })
        .unwrap();
        assert_eq!(order, ["9pnet", "9pnet_virtio", "netfs", "fscache", "9p"]);
    }

    #[test]
    fn a_cycle_is_an_error_not_a_hang() {
        let result = dependency_order(&["a"], |name| {
            Ok(Some(vec![if name == "a" { "b" } else { "a" }.to_string()]))
        });
        assert!(result.is_err());
    }

    #[test]
    fn depends_come_from_modinfo() {
        let module = b"\x7fELF...\0license=GPL\0depends=9pnet,fscache,netfs\0name=9p\0";
        assert_eq!(modinfo_depends(module), ["9pnet", "fscache", "netfs"]);
        assert!(modinfo_depends(b"\0depends=\0name=virtio\0").is_empty());
        assert_eq!(
            module_name(Path::new("kernel/net/9p/9pnet-virtio.ko")),
            Some("9pnet_virtio".to_string())
        );
    }
}
