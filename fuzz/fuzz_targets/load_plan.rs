//! The plan, profile and target loaders on any text: an error or a value, never a panic; a
//! plan that loads re-serializes to a plan that loads the same.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(plan) = mars_plan::Plan::from_yaml(text, "fuzz.plan.yaml") {
        let again = mars_plan::Plan::from_yaml(&plan.to_yaml(), "again.plan.yaml")
            .expect("a written plan loads");
        assert_eq!(plan, again);
    }
    let _ = mars_plan::Profile::from_yaml(text, "fuzz.profile.yaml");
    let _ = mars_plan::Target::from_yaml(text, "fuzz.target.yaml");
});
