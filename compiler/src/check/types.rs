//! Types: lowering written types to [`DataType`], and unifying a node signature with the
//! types of its arguments (type variables and symbolic tensor dims bind within one node).

use std::collections::BTreeMap;

use crate::diagnostics::{did_you_mean, Problem};
use crate::ir::{DType, DataType, Dim};
use crate::syntax::ast::{DimExpr, TypeArg, TypeExpr};

const SCALARS: [(&str, DataType); 8] = [
    ("Bytes", DataType::Bytes),
    ("Text", DataType::Text),
    ("Int", DataType::Int),
    ("Float", DataType::Float),
    ("Bool", DataType::Bool),
    ("Json", DataType::Json),
    ("Image", DataType::Image),
    ("Box", DataType::Box),
];

/// Every type name the language knows.
pub fn type_names() -> impl Iterator<Item = &'static str> {
    SCALARS.iter().map(|(n, _)| *n).chain(["List", "Tensor"])
}

/// Lower a written data type. `type_params` are the names that stand for type variables.
pub fn lower_type(
    t: &TypeExpr,
    type_params: &[String],
    problems: &mut Vec<Problem>,
) -> Option<DataType> {
    let name = t.name.name.as_str();
    if let Some((_, ty)) = SCALARS.iter().find(|(n, _)| *n == name) {
        if !t.args.is_empty() {
            problems.push(
                Problem::error(
                    "mars::type::bad_type",
                    format!("`{name}` takes no type arguments"),
                )
                .label(t.span, "remove the `<…>`"),
            );
            return None;
        }
        return Some(ty.clone());
    }
    if type_params.iter().any(|p| p == name) {
        if !t.args.is_empty() {
            problems.push(
                Problem::error(
                    "mars::type::bad_type",
                    format!("the type parameter `{name}` takes no type arguments"),
                )
                .label(t.span, "remove the `<…>`"),
            );
            return None;
        }
        return Some(DataType::Var(name.to_string()));
    }
    match name {
        "List" => match t.args.as_slice() {
            [TypeArg::Type(inner)] => Some(DataType::List(Box::new(lower_type(
                inner,
                type_params,
                problems,
            )?))),
            _ => {
                problems.push(
                    Problem::error("mars::type::bad_type", "`List` takes one type argument")
                        .label(t.span, "write `List<T>`"),
                );
                None
            }
        },
        "Tensor" => match t.args.as_slice() {
            [TypeArg::Type(dt), TypeArg::Dims(dims, _)] if dt.args.is_empty() => {
                let Some(dtype) = DType::from_name(&dt.name.name) else {
                    let names: Vec<&str> = DType::ALL.iter().map(|d| d.name()).collect();
                    let mut p = Problem::error(
                        "mars::type::bad_type",
                        format!("unknown tensor element type `{}`", dt.name.name),
                    )
                    .label(dt.span, format!("expected one of {}", names.join(", ")));
                    if let Some(s) = did_you_mean(&dt.name.name, names.iter().copied()) {
                        p = p.help(format!("did you mean `{s}`?"));
                    }
                    problems.push(p);
                    return None;
                };
                let mut out = Vec::with_capacity(dims.len());
                for d in dims {
                    match d {
                        DimExpr::Size(n, _) => out.push(Dim::Fixed(*n)),
                        DimExpr::Sym(i) if i.name.starts_with(|c: char| c.is_ascii_digit()) => {
                            problems.push(
                                Problem::error(
                                    "mars::type::bad_type",
                                    "tensor dimension too large",
                                )
                                .label(i.span, "at most 2^64 - 1"),
                            );
                            return None;
                        }
                        DimExpr::Sym(i) => out.push(Dim::Sym(i.name.clone())),
                    }
                }
                Some(DataType::Tensor(dtype, out))
            }
            _ => {
                problems.push(
                    Problem::error(
                        "mars::type::bad_type",
                        "`Tensor` takes an element type and a list of dims",
                    )
                    .label(t.span, "write `Tensor<f32, [1, H, W]>`"),
                );
                None
            }
        },
        _ => {
            let mut p =
                Problem::error("mars::type::unknown_type", format!("unknown type `{name}`"))
                    .label(t.name.span, "not a type");
            let mut candidates: Vec<&str> = type_names().collect();
            candidates.extend(type_params.iter().map(String::as_str));
            if let Some(s) = did_you_mean(name, candidates) {
                p = p.help(format!("did you mean `{s}`?"));
            } else if name.len() == 1 && name.chars().all(|c| c.is_ascii_uppercase()) {
                p = p.help(format!(
                    "declare the type parameter after the fn name: `fn f<{name}>(…)`"
                ));
            }
            problems.push(p);
            None
        }
    }
}

/// Type variables and symbolic dims bound while checking one call.
#[derive(Debug, Default)]
pub struct Subst {
    vars: BTreeMap<String, DataType>,
    dims: BTreeMap<String, Dim>,
}

impl Subst {
    /// Make `param` (a signature type) match `arg` (the type of an argument), binding
    /// variables and dims. On failure, nothing learnt from this pair is kept.
    pub fn unify(&mut self, param: &DataType, arg: &DataType) -> bool {
        let (vars, dims) = (self.vars.clone(), self.dims.clone());
        let ok = self.unify_inner(param, arg);
        if !ok {
            self.vars = vars;
            self.dims = dims;
        }
        ok
    }

    fn unify_inner(&mut self, param: &DataType, arg: &DataType) -> bool {
        match (param, arg) {
            (DataType::Var(v), _) => match self.vars.get(v) {
                Some(bound) => {
                    let bound = bound.clone();
                    compatible(&bound, arg)
                }
                None => {
                    self.vars.insert(v.clone(), arg.clone());
                    true
                }
            },
            (DataType::List(p), DataType::List(a)) => self.unify_inner(p, a),
            (DataType::Tensor(pd, pdims), DataType::Tensor(ad, adims)) => {
                if pd != ad || pdims.len() != adims.len() {
                    return false;
                }
                pdims.iter().zip(adims).all(|(p, a)| self.unify_dim(p, a))
            }
            (p, a) => p == a,
        }
    }

    fn unify_dim(&mut self, param: &Dim, arg: &Dim) -> bool {
        match param {
            Dim::Fixed(n) => match arg {
                Dim::Fixed(m) => n == m,
                // A symbolic size is not known before run time.
                Dim::Sym(_) => true,
            },
            Dim::Sym(s) => match self.dims.get(s) {
                Some(Dim::Fixed(n)) => match arg {
                    Dim::Fixed(m) => n == m,
                    Dim::Sym(_) => true,
                },
                Some(Dim::Sym(_)) => true,
                None => {
                    self.dims.insert(s.clone(), arg.clone());
                    true
                }
            },
        }
    }

    /// `t` with bound variables and dims replaced. `None` if a variable is still unbound.
    pub fn apply(&self, t: &DataType) -> Option<DataType> {
        Some(match t {
            DataType::Var(v) => self.vars.get(v)?.clone(),
            DataType::List(inner) => DataType::List(Box::new(self.apply(inner)?)),
            DataType::Tensor(d, dims) => DataType::Tensor(
                *d,
                dims.iter()
                    .map(|dim| match dim {
                        Dim::Sym(s) => self.dims.get(s).cloned().unwrap_or_else(|| dim.clone()),
                        fixed => fixed.clone(),
                    })
                    .collect(),
            ),
            other => other.clone(),
        })
    }
}

/// Whether a value of type `actual` may flow where `expected` is declared (both concrete):
/// equal, except that a symbolic dim matches any size.
pub fn compatible(expected: &DataType, actual: &DataType) -> bool {
    match (expected, actual) {
        (DataType::List(e), DataType::List(a)) => compatible(e, a),
        (DataType::Tensor(ed, edims), DataType::Tensor(ad, adims)) => {
            ed == ad
                && edims.len() == adims.len()
                && edims.iter().zip(adims).all(|(e, a)| match (e, a) {
                    (Dim::Fixed(n), Dim::Fixed(m)) => n == m,
                    _ => true,
                })
        }
        (e, a) => e == a,
    }
}

/// Every type variable in `t`.
pub fn vars_of(t: &DataType, out: &mut Vec<String>) {
    match t {
        DataType::Var(v) => out.push(v.clone()),
        DataType::List(inner) => vars_of(inner, out),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DataType {
        s.parse().expect(s)
    }

    #[test]
    fn variables_bind_once_per_call() {
        let mut s = Subst::default();
        assert!(s.unify(&t("List<T>"), &t("List<Text>")));
        assert!(s.unify(&t("T"), &t("Text")));
        assert!(!s.unify(&t("T"), &t("Int")));
        assert_eq!(s.apply(&t("List<T>")), Some(t("List<Text>")));
    }

    #[test]
    fn symbolic_dims_unify_within_a_signature() {
        let mut s = Subst::default();
        assert!(s.unify(&t("Tensor<f32, [1, H, W]>"), &t("Tensor<f32, [1, 64, 32]>")));
        assert!(!s.unify(&t("Tensor<f32, [H]>"), &t("Tensor<f32, [65]>")));
        assert!(s.unify(&t("Tensor<f32, [H]>"), &t("Tensor<f32, [64]>")));
        assert!(!s.unify(&t("Tensor<f16, [H]>"), &t("Tensor<f32, [64]>")));
        assert!(!s.unify(&t("Tensor<f32, [1, H]>"), &t("Tensor<f32, [1, 64, 32]>")));
        assert_eq!(
            s.apply(&t("Tensor<f32, [W, H]>")),
            Some(t("Tensor<f32, [32, 64]>"))
        );
    }
}
