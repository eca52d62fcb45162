//! Builder methods that each set one field.

/// Defines, inside an `impl` block, builder methods that each set one field and return the
/// builder: `fn NAME(ARG: TYPE) => FIELD = VALUE;`, with its doc comment and visibility.
///
/// ```
/// #[derive(Default)]
/// pub struct Options {
///     port: u16,
///     name: Option<String>,
/// }
///
/// impl Options {
///     cnm_types::setters! {
///         /// The port.
///         pub fn port(port: u16) => port = port;
///         /// The name.
///         pub fn name(name: impl Into<String>) => name = Some(name.into());
///     }
/// }
///
/// let o = Options::default().port(80).name("web");
/// assert_eq!((o.port, o.name.as_deref()), (80, Some("web")));
/// ```
#[macro_export]
macro_rules! setters {
    ($(
        $(#[$attr:meta])*
        $vis:vis fn $name:ident($arg:ident: $ty:ty) => $field:ident = $value:expr;
    )*) => {
        $(
            $(#[$attr])*
            $vis fn $name(mut self, $arg: $ty) -> Self {
                self.$field = $value;
                self
            }
        )*
    };
}
