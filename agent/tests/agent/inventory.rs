use ota_agent::inventory::{Inventory, InventoryError, disk_space, has_free_space};

use crate::util::tempdir;

#[test]
fn inventory_describes_this_machine() {
    let dir = tempdir();
    let inv = Inventory::collect(dir.path());
    assert!(!inv.arch.is_empty());
    assert!(inv.memory_total_bytes > 0);
    assert!(inv.kernel_version.is_some());
    let free = inv.data_free_bytes.unwrap();
    assert!(free > 0);
    assert!(free <= inv.data_total_bytes.unwrap());
}

#[test]
fn disk_space_check() {
    let dir = tempdir();
    let space = disk_space(dir.path()).unwrap();
    assert!(space.available <= space.total);
    assert!(has_free_space(dir.path(), 1).unwrap());
    assert!(!has_free_space(dir.path(), u64::MAX).unwrap());
    assert!(matches!(
        disk_space(&dir.path().join("missing")),
        Err(InventoryError::Statvfs { .. })
    ));
}
