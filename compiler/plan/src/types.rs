//! Data types as plans spell them (`.mars` syntax): `Text`, `List<Box>`, `Tensor<f32, [1, H, W]>`.

use std::fmt;

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    I64,
    I32,
    U8,
}

impl DType {
    pub const ALL: [DType; 6] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I64,
        DType::I32,
        DType::U8,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::U8 => "u8",
        }
    }

    pub fn from_name(s: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == s)
    }
}

/// One tensor dimension: a size or a symbol unified within a node signature.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dim {
    Fixed(u64),
    Sym(String),
}

/// A data type on an edge.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DataType {
    Bytes,
    Text,
    Int,
    Float,
    Bool,
    Json,
    Image,
    Box,
    List(std::boxed::Box<DataType>),
    Tensor(DType, Vec<Dim>),
    /// A type parameter of a generic fn (`T`); never appears in a checked plan.
    Var(String),
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataType::Bytes => f.write_str("Bytes"),
            DataType::Text => f.write_str("Text"),
            DataType::Int => f.write_str("Int"),
            DataType::Float => f.write_str("Float"),
            DataType::Bool => f.write_str("Bool"),
            DataType::Json => f.write_str("Json"),
            DataType::Image => f.write_str("Image"),
            DataType::Box => f.write_str("Box"),
            DataType::List(t) => write!(f, "List<{t}>"),
            DataType::Tensor(d, dims) => {
                write!(f, "Tensor<{}, [", d.name())?;
                for (i, dim) in dims.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    match dim {
                        Dim::Fixed(n) => write!(f, "{n}")?,
                        Dim::Sym(s) => f.write_str(s)?,
                    }
                }
                f.write_str("]>")
            }
            DataType::Var(v) => f.write_str(v),
        }
    }
}

impl std::str::FromStr for DataType {
    type Err = String;

    /// Parse the plan spelling. Single upper-case identifiers other than the scalar names are
    /// type variables.
    fn from_str(s: &str) -> Result<DataType, String> {
        let mut p = TypeParser {
            s: s.as_bytes(),
            i: 0,
            depth: 0,
        };
        let t = p.ty()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("unexpected `{}` in type `{s}`", &s[p.i..]));
        }
        Ok(t)
    }
}

struct TypeParser<'a> {
    s: &'a [u8],
    i: usize,
    /// `List<…>` levels open: bounded by [`crate::limits::MAX_TYPE_DEPTH`], as in source, so
    /// that a hostile plan cannot overflow the stack.
    depth: usize,
}

impl TypeParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn ident(&mut self) -> Result<String, String> {
        self.ws();
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_')
        {
            self.i += 1;
        }
        if start == self.i {
            return Err("expected a type name".into());
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
    fn eat(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected `{}`", c as char))
        }
    }
    fn ty(&mut self) -> Result<DataType, String> {
        let name = self.ident()?;
        Ok(match name.as_str() {
            "Bytes" => DataType::Bytes,
            "Text" => DataType::Text,
            "Int" => DataType::Int,
            "Float" => DataType::Float,
            "Bool" => DataType::Bool,
            "Json" => DataType::Json,
            "Image" => DataType::Image,
            "Box" => DataType::Box,
            "List" => {
                self.eat(b'<')?;
                self.depth += 1;
                if self.depth > crate::limits::MAX_TYPE_DEPTH {
                    return Err(format!(
                        "types nest deeper than {} levels",
                        crate::limits::MAX_TYPE_DEPTH
                    ));
                }
                let t = self.ty()?;
                self.depth -= 1;
                self.eat(b'>')?;
                DataType::List(std::boxed::Box::new(t))
            }
            "Tensor" => {
                self.eat(b'<')?;
                let d = self.ident()?;
                let dtype = DType::from_name(&d).ok_or_else(|| format!("unknown dtype `{d}`"))?;
                self.eat(b',')?;
                self.eat(b'[')?;
                let mut dims = Vec::new();
                self.ws();
                if self.s.get(self.i) != Some(&b']') {
                    loop {
                        let dim = self.ident()?;
                        dims.push(match dim.parse::<u64>() {
                            Ok(n) => Dim::Fixed(n),
                            Err(_) => Dim::Sym(dim),
                        });
                        self.ws();
                        if self.s.get(self.i) == Some(&b',') {
                            self.i += 1;
                        } else {
                            break;
                        }
                    }
                }
                self.eat(b']')?;
                self.eat(b'>')?;
                DataType::Tensor(dtype, dims)
            }
            other => DataType::Var(other.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_round_trip_through_their_spelling() {
        for s in [
            "Text",
            "List<List<Box>>",
            "Tensor<f32, [1, H, W]>",
            "Tensor<u8, []>",
            "T",
        ] {
            let t: DataType = s.parse().expect(s);
            assert_eq!(t.to_string(), s);
        }
        assert!("List<Text".parse::<DataType>().is_err());
        assert!("Tensor<f99, [1]>".parse::<DataType>().is_err());
        let deep = |n: usize| format!("{}Text{}", "List<".repeat(n), ">".repeat(n));
        assert!(deep(100).parse::<DataType>().is_ok());
        let e = deep(20_000).parse::<DataType>().expect_err("too deep");
        assert_eq!(e, "types nest deeper than 100 levels");
    }
}
