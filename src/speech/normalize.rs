//! Text normalisation before TTS: turns what finance prompts contain (amounts, dates, times,
//! card and phone numbers, percentages) into words a synthesiser reads correctly.
//!
//! One scanner recognises the patterns and produces language-neutral [`Item`]s; each language
//! has its own renderer (`en`, `zh`). Everything that is not recognised is copied through
//! unchanged, so ordinary words, punctuation and whitespace are left alone. Every run of ASCII
//! digits ends up spelled out: numbers too long to read as a quantity (more than 15 digits in
//! English, 16 in Chinese) or with a leading zero are read digit by digit.
//!
//! The scanner works on a `Vec<char>` with bounds-checked lookups only, so no input can panic it.

/// Language of the text, which decides how items are spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lang {
    En,
    Zh,
}

/// Rewrites `text` so that a TTS engine for `lang` reads numbers, amounts, dates and times
/// the way a person would say them.
pub fn normalize(text: &str, lang: Lang) -> String {
    let sc = Scanner {
        chars: text.chars().collect(),
        lang,
    };
    let mut out = String::with_capacity(text.len() * 2);
    let mut pos = 0;
    while let Some(c) = sc.at(pos) {
        if let Some((item, end)) = sc.item(pos) {
            let spoken = match lang {
                Lang::En => en::render(&item),
                Lang::Zh => zh::render(&item),
            };
            push_spaced(&mut out, &spoken, sc.at(end), lang);
            pos = end.max(pos + 1);
            continue;
        }
        if lang == Lang::En {
            if let Some(end) = sc.number_abbreviation(pos) {
                push_spaced(&mut out, "number", sc.at(end), lang);
                pos = end;
                continue;
            }
        }
        out.push(c);
        pos += 1;
    }
    out
}

/// Appends a rendered item, keeping it apart from letters and digits on either side.
/// Chinese needs no spaces between words, only next to Latin letters and digits.
fn push_spaced(out: &mut String, spoken: &str, next: Option<char>, lang: Lang) {
    let needs_gap = |c: char| match lang {
        Lang::En => c.is_alphanumeric(),
        Lang::Zh => c.is_ascii_alphanumeric(),
    };
    if out.chars().next_back().is_some_and(needs_gap) {
        out.push(' ');
    }
    out.push_str(spoken);
    // A digit next is an item too, and spaces itself.
    if next.is_some_and(|c| !c.is_ascii_digit() && needs_gap(c)) {
        out.push(' ');
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sign {
    None,
    Minus,
    Plus,
}

/// A decimal number as written: ASCII digits without separators.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Num {
    sign: Sign,
    int: String,
    frac: Option<String>,
}

/// Currencies the scanner knows, by ISO code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Currency {
    Usd,
    Eur,
    Gbp,
    Cny,
    Jpy,
    Hkd,
    Cad,
    Aud,
    Inr,
}

/// How a currency is written and spoken.
struct CurrencyInfo {
    cur: Currency,
    code: &'static str,
    /// Prefix symbols, longest first within the table order that `currency_prefix` scans.
    symbols: &'static [&'static str],
    /// Words that may follow an amount ("49.95 dollars").
    suffix_words: &'static [&'static str],
    major: (&'static str, &'static str),
    /// Singular and plural of the minor unit, if amounts have one.
    minor: Option<(&'static str, &'static str)>,
    zh: &'static str,
}

const CURRENCIES: &[CurrencyInfo] = &[
    CurrencyInfo {
        cur: Currency::Usd,
        code: "USD",
        symbols: &["US$", "$"],
        suffix_words: &["dollars", "dollar", "美元"],
        major: ("dollar", "dollars"),
        minor: Some(("cent", "cents")),
        zh: "美元",
    },
    CurrencyInfo {
        cur: Currency::Eur,
        code: "EUR",
        symbols: &["€"],
        suffix_words: &["euros", "euro", "€", "欧元"],
        major: ("euro", "euros"),
        minor: Some(("cent", "cents")),
        zh: "欧元",
    },
    CurrencyInfo {
        cur: Currency::Gbp,
        code: "GBP",
        symbols: &["£"],
        suffix_words: &["pounds", "pound", "英镑"],
        major: ("pound", "pounds"),
        minor: Some(("penny", "pence")),
        zh: "英镑",
    },
    CurrencyInfo {
        cur: Currency::Cny,
        code: "CNY",
        symbols: &["CN¥", "RMB", "¥", "￥"],
        suffix_words: &["yuan", "rmb", "元"],
        major: ("yuan", "yuan"),
        minor: Some(("fen", "fen")),
        zh: "元",
    },
    CurrencyInfo {
        cur: Currency::Jpy,
        code: "JPY",
        symbols: &["JP¥"],
        suffix_words: &["yen", "日元"],
        major: ("yen", "yen"),
        minor: None,
        zh: "日元",
    },
    CurrencyInfo {
        cur: Currency::Hkd,
        code: "HKD",
        symbols: &["HK$"],
        suffix_words: &["港元", "港币"],
        major: ("Hong Kong dollar", "Hong Kong dollars"),
        minor: Some(("cent", "cents")),
        zh: "港元",
    },
    CurrencyInfo {
        cur: Currency::Cad,
        code: "CAD",
        symbols: &["CA$", "C$"],
        suffix_words: &["加元"],
        major: ("Canadian dollar", "Canadian dollars"),
        minor: Some(("cent", "cents")),
        zh: "加元",
    },
    CurrencyInfo {
        cur: Currency::Aud,
        code: "AUD",
        symbols: &["AU$", "A$"],
        suffix_words: &["澳元"],
        major: ("Australian dollar", "Australian dollars"),
        minor: Some(("cent", "cents")),
        zh: "澳元",
    },
    CurrencyInfo {
        cur: Currency::Inr,
        code: "INR",
        symbols: &["₹"],
        suffix_words: &["rupees", "rupee"],
        major: ("rupee", "rupees"),
        minor: Some(("paisa", "paise")),
        zh: "印度卢比",
    },
];

fn currency_info(cur: Currency) -> &'static CurrencyInfo {
    CURRENCIES
        .iter()
        .find(|c| c.cur == cur)
        .unwrap_or(&CURRENCIES[0])
}

/// "2.5 million dollars": a scale word after an amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scale {
    Thousand,
    Million,
    Billion,
    Trillion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meridiem {
    Am,
    Pm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Time {
    hour: u32,
    minute: u32,
    meridiem: Option<Meridiem>,
    /// The text already names the part of the day before the time ("下午5:00").
    period_said: bool,
}

impl Time {
    /// Hour on a 12-hour dial and the half of the day.
    fn twelve_hour(self) -> (u32, Meridiem) {
        match (self.meridiem, self.hour) {
            (Some(m), h @ 1..=12) => (h, m),
            (_, 0 | 24) => (12, Meridiem::Am),
            (_, 12) => (12, Meridiem::Pm),
            (_, h @ 13..=23) => (h - 12, Meridiem::Pm),
            (_, h) => (h, Meridiem::Am),
        }
    }

    /// Hour on a 24-hour dial.
    fn hour24(self) -> u32 {
        match self.twelve_hour() {
            (12, Meridiem::Am) => 0,
            (12, Meridiem::Pm) => 12,
            (h, Meridiem::Am) => h,
            (h, Meridiem::Pm) => h + 12,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Date {
    year: u32,
    month: u32,
    day: u32,
}

/// Something recognised in the text, independent of the language it is spoken in.
#[derive(Debug, Clone, PartialEq)]
enum Item {
    Money {
        amount: Num,
        cur: Currency,
        scale: Option<Scale>,
    },
    Percent(Num),
    Ordinal(String),
    Year(u32),
    Date(Date),
    DateTime(Date, Time),
    Time(Time),
    TimeRange(Time, Time),
    /// Read digit by digit; groups are separated by a pause.
    Digits(Vec<String>),
    /// "****4821": the visible digits of a masked number; `said_ending` when the text already
    /// says "ending" before it.
    Masked {
        groups: Vec<String>,
        said_ending: bool,
    },
    Phone {
        plus: bool,
        groups: Vec<String>,
    },
    Number(Num),
    Range(Num, Num),
}

/// Words before a number that mean "read it digit by digit".
const DIGIT_CONTEXT: &[&str] = &[
    "ending in",
    "ending with",
    "ending",
    "ends in",
    "ends with",
    "account no",
    "account number",
    "account",
    "acct no",
    "acct",
    "a/c",
    "card no",
    "card number",
    "card",
    "reference no",
    "reference number",
    "reference",
    "ref no",
    "ref",
    "confirmation number",
    "confirmation code",
    "confirmation",
    "iban",
    "routing number",
    "sort code",
    "pin",
    "code",
    "id",
    "phone",
    "phone number",
    "tel",
    "call",
    "dial",
    "fax",
    "mobile",
    "extension",
    "ext",
    "尾号",
    "卡号",
    "账号",
    "帐号",
    "账户",
    "帐户",
    "号码",
    "电话",
    "手机",
    "验证码",
    "编号",
];

/// Words before a masked number that already say which digits follow.
const ENDING_CONTEXT: &[&str] = &[
    "ending in",
    "ending with",
    "ending",
    "ends in",
    "ends with",
    "尾号",
];

/// Words before a four-digit number that make it a year.
const YEAR_CONTEXT: &[&str] = &[
    "in",
    "since",
    "year",
    "of",
    "from",
    "until",
    "till",
    "by",
    "before",
    "after",
    "during",
    "fy",
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
    "jan",
    "feb",
    "mar",
    "apr",
    "jun",
    "jul",
    "aug",
    "sep",
    "sept",
    "oct",
    "nov",
    "dec",
];

const MASK_CHARS: &[char] = &['*', '•', '●', '·', '×', 'x', 'X'];
const DASHES: &[char] = &['-', '–', '—', '~', '～'];

struct Scanner {
    chars: Vec<char>,
    lang: Lang,
}

fn is_digit(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_ascii_digit())
}

fn is_ascii_alpha(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_ascii_alphabetic())
}

impl Scanner {
    fn at(&self, i: usize) -> Option<char> {
        self.chars.get(i).copied()
    }

    fn before(&self, i: usize) -> Option<char> {
        i.checked_sub(1).and_then(|j| self.at(j))
    }

    /// Length of the run of ASCII digits at `i`.
    fn digit_run(&self, i: usize) -> usize {
        self.chars
            .get(i..)
            .map_or(0, |s| s.iter().take_while(|c| c.is_ascii_digit()).count())
    }

    fn digits(&self, i: usize, len: usize) -> String {
        self.chars
            .get(i..i.saturating_add(len))
            .map_or_else(String::new, |s| s.iter().collect())
    }

    fn number_value(&self, i: usize, len: usize) -> Option<u32> {
        if len == 0 || len > 9 {
            return None;
        }
        self.digits(i, len).parse().ok()
    }

    /// Whether `s` is written at `i` (ASCII letters compared without case).
    fn matches(&self, i: usize, s: &str) -> bool {
        let mut j = i;
        for want in s.chars() {
            match self.at(j) {
                Some(c) if c.eq_ignore_ascii_case(&want) => j += 1,
                _ => return false,
            }
        }
        true
    }

    /// `s` at `i` as a whole word: no ASCII letter right before or after.
    fn word_at(&self, i: usize, s: &str) -> Option<usize> {
        let end = i + s.chars().count();
        let first_alpha = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
        let last_alpha = s
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphabetic());
        (self.matches(i, s)
            && !(first_alpha && is_ascii_alpha(self.before(i)))
            && !(last_alpha && is_ascii_alpha(self.at(end))))
        .then_some(end)
    }

    fn skip_spaces(&self, mut i: usize, max: usize) -> usize {
        let mut n = 0;
        while n < max && self.at(i).is_some_and(|c| c == ' ' || c == '\u{a0}') {
            i += 1;
            n += 1;
        }
        i
    }

    /// Up to 40 characters before `i`, lower-cased, without trailing spaces and punctuation
    /// such as "no. " or "#:".
    fn context_before(&self, i: usize) -> String {
        let start = i.saturating_sub(40);
        let text: String = self
            .chars
            .get(start..i)
            .map_or_else(String::new, |s| s.iter().collect())
            .to_lowercase();
        text.trim_end_matches(|c: char| {
            c.is_whitespace() || matches!(c, ':' | '：' | '#' | '.' | '-' | ',' | '，' | '(')
        })
        .to_string()
    }

    /// Whether the text before `i` ends with one of `words` as a whole word.
    fn context_is(&self, i: usize, words: &[&str]) -> bool {
        let ctx = self.context_before(i);
        words.iter().any(|w| {
            ctx.strip_suffix(w).is_some_and(|rest| {
                let ascii_word = w.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
                !ascii_word
                    || !rest
                        .chars()
                        .next_back()
                        .is_some_and(|c| c.is_alphanumeric())
            })
        })
    }

    /// "Jan 5th, 2026": a year after a month name and a day.
    fn after_month_and_day(&self, i: usize) -> bool {
        let ctx = self.context_before(i);
        let day_less = ctx
            .trim_end_matches(|c: char| c.is_ascii_alphabetic())
            .trim_end_matches(|c: char| c.is_ascii_digit());
        let had_day = day_less.len() < ctx.len();
        let day_less = day_less.trim_end();
        had_day
            && YEAR_CONTEXT
                .iter()
                .skip_while(|w| **w != "january")
                .any(|m| day_less.ends_with(m))
    }

    /// "no." or "#" before a number, spoken "number" (English only).
    fn number_abbreviation(&self, i: usize) -> Option<usize> {
        if self.at(i) == Some('#') && is_digit(self.at(i + 1)) {
            return Some(i + 1);
        }
        let end = self.word_at(i, "no.")?;
        is_digit(self.at(self.skip_spaces(end, 1))).then_some(end)
    }

    fn item(&self, i: usize) -> Option<(Item, usize)> {
        let c = self.at(i)?;
        let interesting = c.is_ascii_digit()
            || c.is_ascii_uppercase()
            || MASK_CHARS.contains(&c)
            || matches!(
                c,
                '+' | '-' | '−' | '(' | '$' | '€' | '£' | '¥' | '￥' | '₹'
            );
        if !interesting {
            return None;
        }
        self.money(i)
            .or_else(|| self.masked(i))
            .or_else(|| self.phone(i))
            .or_else(|| self.date(i))
            .or_else(|| self.time(i))
            .or_else(|| self.context_digits(i))
            .or_else(|| self.number_item(i))
    }

    /// A sign at `i` that belongs to a number: not glued to a word or another number.
    fn sign(&self, i: usize) -> Option<(Sign, usize)> {
        let sign = match self.at(i)? {
            '-' | '−' => Sign::Minus,
            '+' => Sign::Plus,
            _ => return Some((Sign::None, i)),
        };
        let prev = self.before(i);
        let glued = prev.is_some_and(|c| c.is_alphanumeric() || matches!(c, '.' | ',' | '-'));
        (!glued).then_some((sign, i + 1))
    }

    /// An unsigned decimal at `i`: "1,234,567.89", "3.5", "42".
    fn unsigned(&self, i: usize) -> Option<(Num, usize)> {
        let first = self.digit_run(i);
        if first == 0 {
            return None;
        }
        let mut int = self.digits(i, first);
        let mut j = i + first;
        if first <= 3 {
            while self.at(j) == Some(',') && self.digit_run(j + 1) == 3 && !is_digit(self.at(j + 4))
            {
                int.push_str(&self.digits(j + 1, 3));
                j += 4;
            }
        }
        let mut frac = None;
        if self.at(j) == Some('.') {
            let n = self.digit_run(j + 1);
            if n > 0 {
                frac = Some(self.digits(j + 1, n));
                j += 1 + n;
            }
        }
        Some((
            Num {
                sign: Sign::None,
                int,
                frac,
            },
            j,
        ))
    }

    fn currency_prefix(&self, i: usize) -> Option<(Currency, usize)> {
        for info in CURRENCIES {
            for sym in info.symbols {
                if let Some(end) = self.word_at(i, sym) {
                    return Some((info.cur, end));
                }
            }
        }
        CURRENCIES.iter().find_map(|info| {
            let end = self.word_at(i, info.code)?;
            // Codes are upper case only: "cad" or "eur" inside prose are not amounts.
            let upper = self
                .chars
                .get(i..end)
                .is_some_and(|s| s.iter().all(|c| c.is_ascii_uppercase()));
            upper.then_some((info.cur, end))
        })
    }

    fn currency_suffix(&self, i: usize) -> Option<(Currency, usize)> {
        let j = self.skip_spaces(i, 1);
        CURRENCIES.iter().find_map(|info| {
            if let Some(end) = self.word_at(j, info.code) {
                return Some((info.cur, end));
            }
            info.suffix_words
                .iter()
                .find_map(|w| self.word_at(j, w))
                .map(|end| (info.cur, end))
        })
    }

    fn scale(&self, i: usize) -> Option<(Scale, usize)> {
        let j = self.skip_spaces(i, 1);
        let words: [(&str, Scale); 9] = [
            ("thousand", Scale::Thousand),
            ("million", Scale::Million),
            ("billion", Scale::Billion),
            ("trillion", Scale::Trillion),
            ("bn", Scale::Billion),
            ("mn", Scale::Million),
            ("k", Scale::Thousand),
            ("m", Scale::Million),
            ("b", Scale::Billion),
        ];
        words.iter().find_map(|(w, s)| {
            // A single-letter abbreviation must be glued to the number: "$5k", not "$5 k".
            if w.len() == 1 && j != i {
                return None;
            }
            self.word_at(j, w).map(|end| (*s, end))
        })
    }

    /// "$49.95", "-$5", "$-5", "USD 1,000,000", "(£12.50)", "49.95 USD", "100元".
    fn money(&self, i: usize) -> Option<(Item, usize)> {
        let paren = self.at(i) == Some('(');
        let start = if paren { i + 1 } else { i };
        if let Some((sign, j)) = self.sign(start) {
            let cur_at = j;
            if let Some((cur, j)) = self.currency_prefix(cur_at) {
                let j = self.skip_spaces(j, 1);
                let (sign2, j) = if sign == Sign::None {
                    self.sign(j).unwrap_or((Sign::None, j))
                } else {
                    (Sign::None, j)
                };
                if let Some((mut amount, mut end)) = self.unsigned(j) {
                    amount.sign = if sign == Sign::None { sign2 } else { sign };
                    let mut scale = None;
                    if let Some((s, e)) = self.scale(end) {
                        scale = Some(s);
                        end = e;
                    }
                    if paren {
                        if self.at(end) != Some(')') {
                            return None;
                        }
                        amount.sign = Sign::Minus;
                        end += 1;
                    }
                    return Some((Item::Money { amount, cur, scale }, end));
                }
            }
        }
        if paren {
            return None;
        }
        // Amount first, currency after.
        let (sign, j) = self.sign(i)?;
        let (mut amount, end) = self.unsigned(j)?;
        amount.sign = sign;
        let (scale, end) = match self.scale(end) {
            Some((s, e)) => (Some(s), e),
            None => (None, end),
        };
        let (cur, end) = self.currency_suffix(end)?;
        Some((Item::Money { amount, cur, scale }, end))
    }

    /// "****4821", "xxxx-xxxx-4821", "•• 4821".
    fn masked(&self, i: usize) -> Option<(Item, usize)> {
        if is_ascii_alpha(self.before(i)) {
            return None;
        }
        let mut j = i;
        let mut masks = 0;
        // Bounded, so a long run of x's costs linear time overall.
        while let Some(c) = self.at(j).filter(|_| j - i < 40) {
            if MASK_CHARS.contains(&c) {
                masks += 1;
            } else if !(c == ' ' || c == '-') {
                break;
            }
            j += 1;
        }
        if masks < 2 || !is_digit(self.at(j)) {
            return None;
        }
        let (groups, end) = self.digit_groups(j)?;
        let said_ending = self.context_is(i, ENDING_CONTEXT);
        Some((
            Item::Masked {
                groups,
                said_ending,
            },
            end,
        ))
    }

    /// Digit groups separated by single hyphens or spaces: "12-3456", "1234 5678".
    fn digit_groups(&self, i: usize) -> Option<(Vec<String>, usize)> {
        let mut groups = Vec::new();
        let mut j = i;
        loop {
            let n = self.digit_run(j);
            if n == 0 {
                break;
            }
            groups.push(self.digits(j, n));
            j += n;
            let sep = self.at(j);
            let next = self.digit_run(j + 1);
            let joins = match sep {
                Some('-') => next > 0,
                Some(' ') => next >= 2 && groups.last().is_some_and(|g| g.len() >= 2),
                _ => false,
            };
            if !joins {
                break;
            }
            j += 1;
        }
        if groups.is_empty() {
            return None;
        }
        // A decimal or a grouped thousand is a quantity, not an identifier.
        if matches!(self.at(j), Some('.' | ',')) && is_digit(self.at(j + 1)) {
            return None;
        }
        Some((groups, j))
    }

    fn hyphen_groups(&self, i: usize) -> (Vec<String>, usize) {
        let mut groups = Vec::new();
        let mut j = i;
        loop {
            let n = self.digit_run(j);
            if n == 0 {
                break;
            }
            groups.push(self.digits(j, n));
            j += n;
            if self.at(j) != Some('-') || self.digit_run(j + 1) == 0 {
                break;
            }
            j += 1;
        }
        (groups, j)
    }

    fn context_digits(&self, i: usize) -> Option<(Item, usize)> {
        if !self.context_is(i, DIGIT_CONTEXT) {
            return None;
        }
        let (groups, end) = self.digit_groups(i)?;
        Some((Item::Digits(groups), end))
    }

    fn phone(&self, i: usize) -> Option<(Item, usize)> {
        if is_digit(self.before(i)) {
            return None;
        }
        match self.at(i)? {
            '+' => self.international_phone(i),
            '(' => self.paren_phone(i),
            _ => self.plain_phone(i),
        }
    }

    /// "+1 555 123 4567", "+44 (0)20 7946 0958", "+86-138-0013-8000".
    fn international_phone(&self, i: usize) -> Option<(Item, usize)> {
        if !is_digit(self.at(i + 1)) || self.sign(i).is_none() {
            return None;
        }
        let mut groups = Vec::new();
        let mut j = i + 1;
        loop {
            let n = self.digit_run(j);
            if n == 0 {
                break;
            }
            groups.push(self.digits(j, n));
            j += n;
            // Separators: up to two of space, hyphen, dot and parentheses.
            let mut k = j;
            while k < j + 2 && matches!(self.at(k), Some(' ' | '-' | '.' | '(' | ')')) {
                k += 1;
            }
            if k == j || !is_digit(self.at(k)) {
                // A closing parenthesis right after digits belongs to the number.
                if self.at(j) == Some(')') {
                    j += 1;
                }
                break;
            }
            j = k;
        }
        let total: usize = groups.iter().map(String::len).sum();
        ((7..=15).contains(&total) && !is_digit(self.at(j)))
            .then_some((Item::Phone { plus: true, groups }, j))
    }

    /// "(555) 123-4567".
    fn paren_phone(&self, i: usize) -> Option<(Item, usize)> {
        if self.digit_run(i + 1) != 3 || self.at(i + 4) != Some(')') {
            return None;
        }
        let area = self.digits(i + 1, 3);
        let j = self.skip_spaces(i + 5, 1);
        if self.digit_run(j) != 3 || !matches!(self.at(j + 3), Some('-' | '.' | ' ')) {
            return None;
        }
        if self.digit_run(j + 4) != 4 || is_digit(self.at(j + 8)) {
            return None;
        }
        let groups = vec![area, self.digits(j, 3), self.digits(j + 4, 4)];
        Some((
            Item::Phone {
                plus: false,
                groups,
            },
            j + 8,
        ))
    }

    /// "555-123-4567", "555.123.4567", "555 123 4567"; in Chinese also "138 0013 8000" and a
    /// bare mobile number "13800138000".
    fn plain_phone(&self, i: usize) -> Option<(Item, usize)> {
        if matches!(self.before(i), Some('.' | ',')) {
            return None;
        }
        let layouts: &[&[usize]] = match self.lang {
            Lang::En => &[&[3, 3, 4]],
            Lang::Zh => &[&[3, 3, 4], &[3, 4, 4]],
        };
        for layout in layouts {
            let mut groups = Vec::new();
            let mut j = i;
            let mut sep = None;
            for (k, len) in layout.iter().enumerate() {
                if self.digit_run(j) != *len {
                    break;
                }
                groups.push(self.digits(j, *len));
                j += len;
                if k + 1 < layout.len() {
                    let s = self.at(j);
                    if !matches!(s, Some('-' | '.' | ' ')) || sep.is_some_and(|p| Some(p) != s) {
                        break;
                    }
                    sep = s;
                    j += 1;
                }
            }
            if groups.len() == layout.len() && !is_digit(self.at(j)) {
                return Some((
                    Item::Phone {
                        plus: false,
                        groups,
                    },
                    j,
                ));
            }
        }
        let n = self.digit_run(i);
        let mobile = self.lang == Lang::Zh
            && n == 11
            && self.at(i) == Some('1')
            && self.at(i + 1).is_some_and(|c| ('3'..='9').contains(&c));
        if mobile {
            let groups = vec![
                self.digits(i, 3),
                self.digits(i + 3, 4),
                self.digits(i + 7, 4),
            ];
            return Some((
                Item::Phone {
                    plus: false,
                    groups,
                },
                i + 11,
            ));
        }
        None
    }

    /// "2026-12-31", "2026/12/31", "2026年12月31日", and in English "12/31/2026".
    fn date(&self, i: usize) -> Option<(Item, usize)> {
        if is_digit(self.before(i)) {
            return None;
        }
        let (date, end) = self
            .iso_date(i)
            .or_else(|| self.zh_date(i))
            .or_else(|| self.slash_date(i))?;
        if self.at(end) == Some('T') {
            if let Some((Item::Time(t), tend)) = self.time(end + 1) {
                return Some((Item::DateTime(date, t), tend));
            }
        }
        Some((Item::Date(date), end))
    }

    fn iso_date(&self, i: usize) -> Option<(Date, usize)> {
        if self.digit_run(i) != 4 {
            return None;
        }
        let sep = self.at(i + 4).filter(|c| matches!(c, '-' | '/' | '.'))?;
        let ml = self.digit_run(i + 5);
        if !(1..=2).contains(&ml) || self.at(i + 5 + ml) != Some(sep) {
            return None;
        }
        let dstart = i + 6 + ml;
        let dl = self.digit_run(dstart);
        if !(1..=2).contains(&dl) {
            return None;
        }
        let date = valid_date(
            self.number_value(i, 4)?,
            self.number_value(i + 5, ml)?,
            self.number_value(dstart, dl)?,
        )?;
        Some((date, dstart + dl))
    }

    fn zh_date(&self, i: usize) -> Option<(Date, usize)> {
        if self.digit_run(i) != 4 || self.at(i + 4) != Some('年') {
            return None;
        }
        let ml = self.digit_run(i + 5);
        if !(1..=2).contains(&ml) || self.at(i + 5 + ml) != Some('月') {
            return None;
        }
        let dstart = i + 6 + ml;
        let dl = self.digit_run(dstart);
        if !(1..=2).contains(&dl) || !matches!(self.at(dstart + dl), Some('日' | '号')) {
            return None;
        }
        let date = valid_date(
            self.number_value(i, 4)?,
            self.number_value(i + 5, ml)?,
            self.number_value(dstart, dl)?,
        )?;
        Some((date, dstart + dl + 1))
    }

    /// US order month/day/year; day/month/year when the first number cannot be a month.
    fn slash_date(&self, i: usize) -> Option<(Date, usize)> {
        if self.lang != Lang::En {
            return None;
        }
        let al = self.digit_run(i);
        if !(1..=2).contains(&al) || self.at(i + al) != Some('/') {
            return None;
        }
        let bstart = i + al + 1;
        let bl = self.digit_run(bstart);
        if !(1..=2).contains(&bl) || self.at(bstart + bl) != Some('/') {
            return None;
        }
        let ystart = bstart + bl + 1;
        if self.digit_run(ystart) != 4 {
            return None;
        }
        let a = self.number_value(i, al)?;
        let b = self.number_value(bstart, bl)?;
        let y = self.number_value(ystart, 4)?;
        let date = valid_date(y, a, b).or_else(|| valid_date(y, b, a))?;
        Some((date, ystart + 4))
    }

    /// "09:30", "9:30 pm", "17:00", and ranges "9:00–17:00".
    fn time(&self, i: usize) -> Option<(Item, usize)> {
        let (first, end) = self.clock(i)?;
        let j = self.skip_spaces(end, 1);
        let dash = self.at(j).filter(|c| DASHES.contains(c)).map(|_| j + 1);
        let to = self.word_at(j, "to").or_else(|| self.word_at(j, "until"));
        if let Some(k) = dash.or(to) {
            let k = self.skip_spaces(k, 1);
            if let Some((second, end2)) = self.clock(k) {
                let first = match (first.meridiem, second.meridiem) {
                    // "9:30–11:00 am": the first time shares the marker, or has the other one
                    // when it is later on the dial ("11:00–1:00 pm").
                    (None, Some(m)) if (1..=12).contains(&first.hour) => {
                        let (h2, _) = second.twelve_hour();
                        let same = first.hour % 12 <= h2 % 12;
                        let other = if m == Meridiem::Am {
                            Meridiem::Pm
                        } else {
                            Meridiem::Am
                        };
                        Time {
                            meridiem: Some(if same { m } else { other }),
                            ..first
                        }
                    }
                    _ => first,
                };
                return Some((Item::TimeRange(first, second), end2));
            }
        }
        Some((Item::Time(first), end))
    }

    /// One clock time with an optional am/pm marker.
    fn clock(&self, i: usize) -> Option<(Time, usize)> {
        if is_digit(self.before(i)) || self.before(i) == Some(':') {
            return None;
        }
        let hl = self.digit_run(i);
        if !(1..=2).contains(&hl) {
            return None;
        }
        if self.at(i + hl) != Some(':') {
            // "7pm", "7 p.m.": an hour alone needs its marker.
            let hour = self.number_value(i, hl).filter(|h| (1..=12).contains(h))?;
            let (meridiem, end) = self.meridiem(i + hl)?;
            let time = Time {
                hour,
                minute: 0,
                meridiem: Some(meridiem),
                period_said: self.period_before(i).is_some(),
            };
            return Some((time, end));
        }
        let mstart = i + hl + 1;
        if self.digit_run(mstart) != 2 {
            return None;
        }
        // "10:30:15" and "1:23:45" (durations, seconds) are left to plain numbers.
        if self.at(mstart + 2) == Some(':') && is_digit(self.at(mstart + 3)) {
            return None;
        }
        let hour = self.number_value(i, hl)?;
        let minute = self.number_value(mstart, 2)?;
        if hour > 24 || minute > 59 || hour == 24 && minute > 0 {
            return None;
        }
        let (mut meridiem, end) = match self.meridiem(mstart + 2) {
            // "17:00 pm" says the same twice; the 24-hour reading wins.
            Some((m, end)) => ((hour <= 12).then_some(m), end),
            None => (None, mstart + 2),
        };
        let said = self.period_before(i);
        if let Some(m) = said {
            if meridiem.is_none() && (1..=12).contains(&hour) {
                meridiem = Some(m);
            }
        }
        Some((
            Time {
                hour,
                minute,
                meridiem,
                period_said: said.is_some(),
            },
            end,
        ))
    }

    /// A Chinese part of the day written right before a time: "下午5:00".
    fn period_before(&self, i: usize) -> Option<Meridiem> {
        if self.lang != Lang::Zh {
            return None;
        }
        let ctx = self.context_before(i);
        [
            ("凌晨", Meridiem::Am),
            ("早上", Meridiem::Am),
            ("上午", Meridiem::Am),
            ("中午", Meridiem::Pm),
            ("下午", Meridiem::Pm),
            ("晚上", Meridiem::Pm),
        ]
        .into_iter()
        .find_map(|(w, m)| ctx.ends_with(w).then_some(m))
    }

    /// "am", "p.m.", "PM" after a time, with at most one space before it.
    fn meridiem(&self, i: usize) -> Option<(Meridiem, usize)> {
        let j = self.skip_spaces(i, 1);
        [
            ("a.m.", Meridiem::Am),
            ("p.m.", Meridiem::Pm),
            ("am", Meridiem::Am),
            ("pm", Meridiem::Pm),
        ]
        .into_iter()
        .find_map(|(text, m)| {
            let end = if text.ends_with('.') {
                self.matches(j, text).then_some(j + text.chars().count())
            } else {
                self.word_at(j, text)
            };
            end.map(|e| (m, e))
        })
    }

    /// Plain numbers and what follows them: "%", ordinal suffixes, "年", ranges, years.
    fn number_item(&self, i: usize) -> Option<(Item, usize)> {
        let (sign, j) = self.sign(i)?;
        let (mut num, end) = self.unsigned(j)?;
        num.sign = sign;
        let plain_int = num.frac.is_none() && num.sign == Sign::None;
        if matches!(self.at(end), Some('%' | '％')) {
            return Some((Item::Percent(num), end + 1));
        }
        if plain_int {
            for suffix in ["st", "nd", "rd", "th"] {
                if self.matches(end, suffix) && !is_ascii_alpha(self.at(end + 2)) {
                    return Some((Item::Ordinal(num.int), end + 2));
                }
            }
        }
        let four_digits = plain_int && end == j + 4;
        let year = four_digits.then(|| num.int.parse::<u32>().ok()).flatten();
        if let Some(y) = year {
            if self.at(end) == Some('年') {
                return Some((Item::Year(y), end));
            }
        }
        if plain_int && self.at(end) == Some('-') {
            // Three or more hyphenated groups are an identifier: "1-800-555-0199".
            let groups = self.hyphen_groups(j);
            if groups.0.len() >= 3 {
                return Some((Item::Digits(groups.0), groups.1));
            }
        }
        if num.sign == Sign::None && !is_digit(self.before(i)) {
            let k = self.skip_spaces(end, 1);
            let dash = self.at(k).filter(|c| DASHES.contains(c));
            // An ASCII hyphen is a range when unspaced ("10-20") or spaced on both sides;
            // other dashes always are.
            let range_dash = match dash {
                Some('-') => {
                    k == end && self.digit_run(k + 1) > 0 || k > end && self.at(k + 1) == Some(' ')
                }
                Some(_) => true,
                None => false,
            };
            if range_dash {
                let k2 = self.skip_spaces(k + 1, 1);
                if let Some((to, end2)) = self.unsigned(k2) {
                    return Some((Item::Range(num, to), end2));
                }
            }
        }
        if let Some(y) = year.filter(|y| (1000..=2099).contains(y)) {
            if self.context_is(i, YEAR_CONTEXT) || self.after_month_and_day(i) {
                return Some((Item::Year(y), end));
            }
        }
        Some((Item::Number(num), end))
    }
}

fn valid_date(year: u32, month: u32, day: u32) -> Option<Date> {
    let leap = year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400));
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    (1..=days)
        .contains(&day)
        .then_some(Date { year, month, day })
}

/// English renderer.
mod en {
    use super::{Currency, Date, Item, Meridiem, Num, Scale, Sign, Time};

    const ONES: [&str; 20] = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
    ];
    const TENS: [&str; 10] = [
        "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
    ];
    const SCALES: [&str; 5] = ["", "thousand", "million", "billion", "trillion"];
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    /// Longest integer read as a quantity; longer ones are read digit by digit.
    const MAX_CARDINAL_DIGITS: usize = 15;

    pub(super) fn render(item: &Item) -> String {
        match item {
            Item::Money { amount, cur, scale } => money(amount, *cur, *scale),
            Item::Percent(n) => format!("{} percent", number(n)),
            Item::Ordinal(digits) => ordinal_digits(digits),
            Item::Year(y) => year(*y),
            Item::Date(d) => date(*d),
            Item::DateTime(d, t) => format!("{} at {}", date(*d), time(*t)),
            Item::Time(t) => time(*t),
            Item::TimeRange(a, b) => format!("{} to {}", time(*a), time(*b)),
            Item::Digits(groups) => digit_groups(groups),
            Item::Masked {
                groups,
                said_ending: true,
            } => digit_groups(groups),
            Item::Masked { groups, .. } => format!("ending in {}", digit_groups(groups)),
            Item::Phone { plus, groups } => {
                let digits = digit_groups(groups);
                if *plus {
                    format!("plus {digits}")
                } else {
                    digits
                }
            }
            Item::Number(n) => number(n),
            Item::Range(a, b) => format!("{} to {}", number(a), number(b)),
        }
    }

    fn under_thousand(n: u64) -> String {
        let n = n % 1000;
        let (h, rest) = (n / 100, n % 100);
        let mut parts = Vec::new();
        if h > 0 {
            parts.push(format!("{} hundred", word(h)));
        }
        if rest > 0 || h == 0 {
            parts.push(under_hundred(rest));
        }
        parts.join(" ")
    }

    fn word(n: u64) -> &'static str {
        usize::try_from(n)
            .ok()
            .and_then(|i| ONES.get(i))
            .copied()
            .unwrap_or("")
    }

    fn under_hundred(n: u64) -> String {
        if n < 20 {
            return word(n).to_string();
        }
        let tens = usize::try_from(n / 10)
            .ok()
            .and_then(|i| TENS.get(i))
            .copied()
            .unwrap_or("");
        match n % 10 {
            0 => tens.to_string(),
            u => format!("{tens}-{}", word(u)),
        }
    }

    pub(super) fn cardinal(n: u64) -> String {
        if n == 0 {
            return "zero".to_string();
        }
        let mut groups = Vec::new();
        let mut rest = n;
        while rest > 0 {
            groups.push(rest % 1000);
            rest /= 1000;
        }
        let mut parts = Vec::new();
        for (i, g) in groups.iter().enumerate().rev() {
            if *g == 0 {
                continue;
            }
            let scale = SCALES.get(i).copied().unwrap_or("");
            if scale.is_empty() {
                parts.push(under_thousand(*g));
            } else {
                parts.push(format!("{} {scale}", under_thousand(*g)));
            }
        }
        parts.join(" ")
    }

    /// Cardinal of a digit string, or its digits one by one when it is too long for that or
    /// starts with a zero.
    fn integer(digits: &str) -> String {
        if digits.len() > 1 && digits.starts_with('0') || digits.len() > MAX_CARDINAL_DIGITS {
            return spell_digits(digits);
        }
        digits
            .parse::<u64>()
            .map_or_else(|_| spell_digits(digits), cardinal)
    }

    pub(super) fn spell_digits(digits: &str) -> String {
        digits
            .chars()
            .filter_map(|c| c.to_digit(10))
            .map(|d| word(u64::from(d)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn digit_groups(groups: &[String]) -> String {
        groups
            .iter()
            .map(|g| spell_digits(g))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn sign(s: Sign) -> &'static str {
        match s {
            Sign::None => "",
            Sign::Minus => "minus ",
            Sign::Plus => "plus ",
        }
    }

    fn unsigned(n: &Num) -> String {
        match &n.frac {
            Some(f) => format!("{} point {}", integer(&n.int), spell_digits(f)),
            None => integer(&n.int),
        }
    }

    fn number(n: &Num) -> String {
        format!("{}{}", sign(n.sign), unsigned(n))
    }

    fn ordinal_word(w: &str) -> String {
        match w {
            "one" => "first".into(),
            "two" => "second".into(),
            "three" => "third".into(),
            "five" => "fifth".into(),
            "eight" => "eighth".into(),
            "nine" => "ninth".into(),
            "twelve" => "twelfth".into(),
            w => match w.strip_suffix('y') {
                Some(stem) => format!("{stem}ieth"),
                None => format!("{w}th"),
            },
        }
    }

    /// "twenty-one" → "twenty-first": only the last word changes.
    pub(super) fn ordinal(n: u64) -> String {
        let words = cardinal(n);
        let cut = words.rfind([' ', '-']).map_or(0, |i| i + 1);
        let (head, last) = words.split_at(cut);
        format!("{head}{}", ordinal_word(last))
    }

    fn ordinal_digits(digits: &str) -> String {
        match digits.parse::<u64>() {
            Ok(n) if digits.len() <= MAX_CARDINAL_DIGITS => ordinal(n),
            _ => format!("number {}", spell_digits(digits)),
        }
    }

    pub(super) fn year(y: u32) -> String {
        let (hi, lo) = (u64::from(y / 100), u64::from(y % 100));
        if !(1000..=9999).contains(&y) {
            return cardinal(u64::from(y));
        }
        if hi % 10 == 0 && lo < 10 {
            // 2000–2009: "two thousand five".
            return cardinal(u64::from(y));
        }
        match lo {
            0 => format!("{} hundred", under_hundred(hi)),
            1..=9 => format!("{} oh {}", under_hundred(hi), word(lo)),
            _ => format!("{} {}", under_hundred(hi), under_hundred(lo)),
        }
    }

    fn date(d: Date) -> String {
        let month = usize::try_from(d.month)
            .ok()
            .and_then(|m| m.checked_sub(1))
            .and_then(|m| MONTHS.get(m))
            .copied()
            .unwrap_or("");
        format!("{month} {}, {}", ordinal(u64::from(d.day)), year(d.year))
    }

    fn time(t: Time) -> String {
        let (h, m) = t.twelve_hour();
        let minutes = match t.minute {
            0 => String::new(),
            m @ 1..=9 => format!(" oh {}", word(u64::from(m))),
            m => format!(" {}", under_hundred(u64::from(m))),
        };
        let half = match m {
            Meridiem::Am => "a m",
            Meridiem::Pm => "p m",
        };
        format!("{}{minutes} {half}", cardinal(u64::from(h)))
    }

    fn scale_word(s: Scale) -> &'static str {
        match s {
            Scale::Thousand => "thousand",
            Scale::Million => "million",
            Scale::Billion => "billion",
            Scale::Trillion => "trillion",
        }
    }

    fn money(amount: &Num, cur: Currency, scale: Option<Scale>) -> String {
        let info = super::currency_info(cur);
        let (major_one, major_many) = info.major;
        let prefix = sign(amount.sign);
        if let Some(s) = scale {
            return format!(
                "{prefix}{} {} {major_many}",
                unsigned(amount),
                scale_word(s)
            );
        }
        let is_one = amount.int == "1";
        let major = if is_one { major_one } else { major_many };
        let Some(frac) = &amount.frac else {
            return format!("{prefix}{} {major}", integer(&amount.int));
        };
        let minor_value = match (info.minor, frac.len()) {
            (Some(names), 1 | 2) => {
                let padded = format!("{frac:0<2}");
                padded.parse::<u64>().ok().map(|v| (names, v))
            }
            _ => None,
        };
        let Some(((minor_one, minor_many), cents)) = minor_value else {
            return format!("{prefix}{} {major_many}", unsigned(amount));
        };
        let minor = if cents == 1 { minor_one } else { minor_many };
        let int_zero = amount.int.chars().all(|c| c == '0');
        match (int_zero, cents) {
            (_, 0) => format!("{prefix}{} {major}", integer(&amount.int)),
            (true, c) => format!("{prefix}{} {minor}", cardinal(c)),
            (false, c) => format!(
                "{prefix}{} {major} and {} {minor}",
                integer(&amount.int),
                cardinal(c)
            ),
        }
    }
}

/// Chinese (Mandarin) renderer.
mod zh {
    use super::{Currency, Date, Item, Meridiem, Num, Scale, Sign, Time};

    const DIGITS: [char; 10] = ['零', '一', '二', '三', '四', '五', '六', '七', '八', '九'];
    /// Longest integer read as a quantity (up to 万亿); longer ones are read digit by digit.
    const MAX_CARDINAL_DIGITS: usize = 16;

    pub(super) fn render(item: &Item) -> String {
        match item {
            Item::Money { amount, cur, scale } => money(amount, *cur, *scale),
            Item::Percent(n) => format!("{}百分之{}", sign(n.sign), unsigned(n)),
            Item::Ordinal(digits) => format!("第{}", integer(digits)),
            Item::Year(y) => year(*y),
            Item::Date(d) => date(*d),
            Item::DateTime(d, t) => format!("{}{}", date(*d), time(*t)),
            Item::Time(t) => time(*t),
            Item::TimeRange(a, b) => format!("{}到{}", time(*a), time(*b)),
            Item::Digits(groups) => digit_groups(groups),
            Item::Masked {
                groups,
                said_ending: true,
            } => digit_groups(groups),
            Item::Masked { groups, .. } => format!("尾号{}", digit_groups(groups)),
            Item::Phone { plus, groups } => {
                let digits = digit_groups(groups);
                if *plus {
                    format!("加{digits}")
                } else {
                    digits
                }
            }
            Item::Number(n) => number(n),
            Item::Range(a, b) => format!("{}到{}", number(a), number(b)),
        }
    }

    fn digit(d: u64) -> char {
        usize::try_from(d)
            .ok()
            .and_then(|i| DIGITS.get(i))
            .copied()
            .unwrap_or('零')
    }

    /// One group of four digits (0 < n < 10000); `leading` drops the 一 of a leading 十.
    fn section(n: u64, leading: bool) -> String {
        let mut out = String::new();
        let mut started = false;
        let mut zero = false;
        for (value, unit) in [(1000, "千"), (100, "百"), (10, "十"), (1, "")] {
            let d = n / value % 10;
            if d == 0 {
                zero |= started;
                continue;
            }
            if zero {
                out.push('零');
                zero = false;
            }
            if !(leading && !started && d == 1 && value == 10) {
                out.push(digit(d));
            }
            out.push_str(unit);
            started = true;
        }
        out
    }

    pub(super) fn cardinal(n: u64) -> String {
        if n == 0 {
            return "零".to_string();
        }
        let mut sections = Vec::new();
        let mut rest = n;
        while rest > 0 {
            sections.push(rest % 10_000);
            rest /= 10_000;
        }
        let units = ["", "万", "亿", "万亿"];
        let mut out = String::new();
        let mut gap = false;
        for (i, sec) in sections.iter().enumerate().rev() {
            if *sec == 0 {
                gap |= !out.is_empty();
                continue;
            }
            if !out.is_empty() && (gap || *sec < 1000) {
                out.push('零');
            }
            gap = false;
            out.push_str(&section(*sec, out.is_empty()));
            out.push_str(units.get(i).copied().unwrap_or(""));
        }
        out
    }

    fn integer(digits: &str) -> String {
        if digits.len() > 1 && digits.starts_with('0') || digits.len() > MAX_CARDINAL_DIGITS {
            return spell_digits(digits);
        }
        digits
            .parse::<u64>()
            .map_or_else(|_| spell_digits(digits), cardinal)
    }

    fn spell_digits(digits: &str) -> String {
        digits
            .chars()
            .filter_map(|c| c.to_digit(10))
            .map(|d| digit(u64::from(d)))
            .collect()
    }

    fn digit_groups(groups: &[String]) -> String {
        groups
            .iter()
            .map(|g| spell_digits(g))
            .collect::<Vec<_>>()
            .join("，")
    }

    fn sign(s: Sign) -> &'static str {
        match s {
            Sign::None => "",
            Sign::Minus => "负",
            Sign::Plus => "正",
        }
    }

    fn unsigned(n: &Num) -> String {
        match &n.frac {
            Some(f) => format!("{}点{}", integer(&n.int), spell_digits(f)),
            None => integer(&n.int),
        }
    }

    fn number(n: &Num) -> String {
        format!("{}{}", sign(n.sign), unsigned(n))
    }

    /// Years are read digit by digit, with 〇 for zero: 二〇二六.
    fn year(y: u32) -> String {
        y.to_string()
            .chars()
            .filter_map(|c| c.to_digit(10))
            .map(|d| if d == 0 { '〇' } else { digit(u64::from(d)) })
            .collect()
    }

    fn date(d: Date) -> String {
        format!(
            "{}年{}月{}日",
            year(d.year),
            cardinal(u64::from(d.month)),
            cardinal(u64::from(d.day))
        )
    }

    fn time(t: Time) -> String {
        let h24 = t.hour24();
        let period = match (t.meridiem, h24) {
            (Some(Meridiem::Am), 0..=5) | (None, 0..=5) => "凌晨",
            (_, 0..=11) => "上午",
            (_, 12) => "中午",
            (_, 13..=17) => "下午",
            _ => "晚上",
        };
        let (h12, _) = t.twelve_hour();
        // Clock hours say 两 for two.
        let hour = if h12 == 2 {
            "两".to_string()
        } else {
            cardinal(u64::from(h12))
        };
        let minutes = match t.minute {
            0 => String::new(),
            m @ 1..=9 => format!("零{}分", digit(u64::from(m))),
            m => format!("{}分", cardinal(u64::from(m))),
        };
        let period = if t.period_said { "" } else { period };
        format!("{period}{hour}点{minutes}")
    }

    fn scale_word(s: Scale) -> &'static str {
        match s {
            Scale::Thousand => "千",
            Scale::Million => "百万",
            Scale::Billion => "十亿",
            Scale::Trillion => "万亿",
        }
    }

    fn money(amount: &Num, cur: Currency, scale: Option<Scale>) -> String {
        let info = super::currency_info(cur);
        let prefix = sign(amount.sign);
        if let Some(s) = scale {
            return format!("{prefix}{}{}{}", unsigned(amount), scale_word(s), info.zh);
        }
        let yuan_style = cur == Currency::Cny;
        let frac = amount.frac.as_deref().unwrap_or("");
        if !yuan_style || frac.len() > 2 {
            return format!("{prefix}{}{}", unsigned(amount), info.zh);
        }
        // 元, 角, 分: 1234.05 → 一千二百三十四元零五分.
        let mut digits = frac.chars().filter_map(|c| c.to_digit(10));
        let jiao = u64::from(digits.next().unwrap_or(0));
        let fen = u64::from(digits.next().unwrap_or(0));
        let int_zero = amount.int.chars().all(|c| c == '0');
        let mut out = prefix.to_string();
        if !int_zero || jiao == 0 && fen == 0 {
            out.push_str(&integer(&amount.int));
            out.push('元');
        }
        if jiao > 0 {
            out.push(digit(jiao));
            out.push('角');
        }
        if fen > 0 {
            if jiao == 0 && !int_zero {
                out.push('零');
            }
            out.push(digit(fen));
            out.push('分');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn en(s: &str) -> String {
        normalize(s, Lang::En)
    }

    fn zh(s: &str) -> String {
        normalize(s, Lang::Zh)
    }

    #[test]
    fn dollars_and_cents() {
        assert_eq!(en("$49.95"), "forty-nine dollars and ninety-five cents");
        assert_eq!(en("$1.01"), "one dollar and one cent");
        assert_eq!(en("$0.95"), "ninety-five cents");
        assert_eq!(en("$1"), "one dollar");
        assert_eq!(en("$12.5"), "twelve dollars and fifty cents");
        assert_eq!(en("$3.00"), "three dollars");
        assert_eq!(en("US$20"), "twenty dollars");
        assert_eq!(en("$2.5 million"), "two point five million dollars");
        assert_eq!(en("$5k"), "five thousand dollars");
        assert_eq!(en("49.95 USD"), "forty-nine dollars and ninety-five cents");
        assert_eq!(en("2.50 dollars"), "two dollars and fifty cents");
    }

    #[test]
    fn yuan_in_english_and_chinese() {
        assert_eq!(
            en("¥1,234.50"),
            "one thousand two hundred thirty-four yuan and fifty fen"
        );
        assert_eq!(zh("¥1,234.50"), "一千二百三十四元五角");
        assert_eq!(zh("￥49.95"), "四十九元九角五分");
        assert_eq!(zh("¥1234.05"), "一千二百三十四元零五分");
        assert_eq!(zh("¥0.05"), "五分");
        assert_eq!(zh("¥10.00"), "十元");
        assert_eq!(zh("余额1234.50元"), "余额一千二百三十四元五角");
        assert_eq!(en("100 RMB"), "one hundred yuan");
    }

    #[test]
    fn other_currencies() {
        assert_eq!(en("€3"), "three euros");
        assert_eq!(en("€1"), "one euro");
        assert_eq!(en("£1.50"), "one pound and fifty pence");
        assert_eq!(en("£0.01"), "one penny");
        assert_eq!(en("USD 1,000,000"), "one million dollars");
        assert_eq!(en("JPY 5000"), "five thousand yen");
        assert_eq!(en("HK$8.80"), "eight Hong Kong dollars and eighty cents");
        assert_eq!(zh("USD 1,000,000"), "一百万美元");
        assert_eq!(zh("€3"), "三欧元");
        assert_eq!(zh("$49.95"), "四十九点九五美元");
        assert_eq!(zh("$2.5 million"), "二点五百万美元");
        // Lower-case "cad" is a word, not a currency code.
        assert_eq!(en("a cad 5 times"), "a cad five times");
    }

    #[test]
    fn negative_amounts() {
        assert_eq!(
            en("-$49.95"),
            "minus forty-nine dollars and ninety-five cents"
        );
        assert_eq!(en("$-5"), "minus five dollars");
        assert_eq!(en("−€3"), "minus three euros");
        assert_eq!(en("(£12.50)"), "minus twelve pounds and fifty pence");
        assert_eq!(
            en("balance: -1,200 USD"),
            "balance: minus one thousand two hundred dollars"
        );
        assert_eq!(zh("-¥5.50"), "负五元五角");
        assert_eq!(zh("-$5"), "负五美元");
    }

    #[test]
    fn plain_numbers() {
        assert_eq!(en("0"), "zero");
        assert_eq!(en("7"), "seven");
        assert_eq!(en("42"), "forty-two");
        assert_eq!(en("100"), "one hundred");
        assert_eq!(en("1005"), "one thousand five");
        assert_eq!(
            en("1,234,567"),
            "one million two hundred thirty-four thousand five hundred sixty-seven"
        );
        assert_eq!(en("3.14"), "three point one four");
        assert_eq!(en("-7 degrees"), "minus seven degrees");
        assert_eq!(en("you have 3 messages"), "you have three messages");
        assert_eq!(en("Q3 results"), "Q three results");
        assert_eq!(en("1,2,3"), "one,two,three");
        assert_eq!(en("999999999999999"), "nine hundred ninety-nine trillion nine hundred ninety-nine billion nine hundred ninety-nine million nine hundred ninety-nine thousand nine hundred ninety-nine");
    }

    #[test]
    fn chinese_numbers() {
        assert_eq!(zh("0"), "零");
        assert_eq!(zh("10"), "十");
        assert_eq!(zh("15"), "十五");
        assert_eq!(zh("110"), "一百一十");
        assert_eq!(zh("1005"), "一千零五");
        assert_eq!(zh("1234"), "一千二百三十四");
        assert_eq!(zh("20010"), "二万零一十");
        assert_eq!(zh("100000"), "十万");
        assert_eq!(zh("100000000"), "一亿");
        assert_eq!(zh("100010000"), "一亿零一万");
        assert_eq!(zh("3.14"), "三点一四");
        assert_eq!(zh("-7"), "负七");
        assert_eq!(zh("您有3条新消息"), "您有三条新消息");
    }

    #[test]
    fn ordinals() {
        assert_eq!(en("1st"), "first");
        assert_eq!(en("2nd"), "second");
        assert_eq!(en("3rd"), "third");
        assert_eq!(en("4th"), "fourth");
        assert_eq!(en("11th"), "eleventh");
        assert_eq!(en("12th"), "twelfth");
        assert_eq!(en("20th"), "twentieth");
        assert_eq!(en("21st"), "twenty-first");
        assert_eq!(en("22nd"), "twenty-second");
        assert_eq!(en("100th"), "one hundredth");
        assert_eq!(en("the 1st payment"), "the first payment");
        assert_eq!(zh("22nd"), "第二十二");
        // A suffix glued to more letters is not an ordinal.
        assert_eq!(en("1stop"), "one stop");
    }

    #[test]
    fn percentages() {
        assert_eq!(en("3.5%"), "three point five percent");
        assert_eq!(
            en("rate 19.99% APR"),
            "rate nineteen point nine nine percent APR"
        );
        assert_eq!(en("-2%"), "minus two percent");
        assert_eq!(zh("3.5%"), "百分之三点五");
        assert_eq!(zh("利率5％"), "利率百分之五");
    }

    #[test]
    fn dates() {
        assert_eq!(en("2026-12-31"), "December thirty-first, twenty twenty-six");
        assert_eq!(
            en("2024-02-29"),
            "February twenty-ninth, twenty twenty-four"
        );
        assert_eq!(en("2005-03-01"), "March first, two thousand five");
        assert_eq!(en("12/31/2026"), "December thirty-first, twenty twenty-six");
        assert_eq!(en("31/12/2026"), "December thirty-first, twenty twenty-six");
        assert_eq!(
            en("2026-12-31T17:00"),
            "December thirty-first, twenty twenty-six at five p m"
        );
        assert_eq!(
            en("2026年12月31日"),
            "December thirty-first, twenty twenty-six"
        );
        assert_eq!(zh("2026-12-31"), "二〇二六年十二月三十一日");
        assert_eq!(zh("2026年12月31日"), "二〇二六年十二月三十一日");
        assert_eq!(zh("2026年1月5号"), "二〇二六年一月五日");
        // Not a calendar date: no month 13, no 30th of February.
        assert!(!en("2026-13-01").contains("January"));
        assert!(!en("2026-02-30").contains("February"));
    }

    #[test]
    fn years() {
        assert_eq!(en("in 2026"), "in twenty twenty-six");
        assert_eq!(en("since 1999"), "since nineteen ninety-nine");
        assert_eq!(en("in 2005"), "in two thousand five");
        assert_eq!(en("in 1905"), "in nineteen oh five");
        assert_eq!(en("in 1900"), "in nineteen hundred");
        assert_eq!(en("December 2026"), "December twenty twenty-six");
        assert_eq!(en("by Jan 5th, 2026."), "by Jan fifth, twenty twenty-six.");
        // Without a year word, a four-digit number is a quantity.
        assert_eq!(en("2026 points"), "two thousand twenty-six points");
        assert_eq!(zh("2026年"), "二〇二六年");
    }

    #[test]
    fn times() {
        assert_eq!(en("09:30"), "nine thirty a m");
        assert_eq!(en("9:30 pm"), "nine thirty p m");
        assert_eq!(en("9:30pm"), "nine thirty p m");
        assert_eq!(en("9:30 p.m."), "nine thirty p m");
        assert_eq!(en("17:00"), "five p m");
        assert_eq!(en("12:00"), "twelve p m");
        assert_eq!(en("00:15"), "twelve fifteen a m");
        assert_eq!(en("12:30 am"), "twelve thirty a m");
        assert_eq!(en("9:05"), "nine oh five a m");
        assert_eq!(en("open at 8:00 AM."), "open at eight a m.");
        assert_eq!(zh("17:00"), "下午五点");
        assert_eq!(zh("09:30"), "上午九点三十分");
        assert_eq!(zh("14:05"), "下午两点零五分");
        assert_eq!(zh("12:00"), "中午十二点");
        assert_eq!(zh("20:15"), "晚上八点十五分");
        assert_eq!(zh("下午5:30"), "下午五点三十分");
        assert_eq!(zh("晚上7pm"), "晚上七点");
        assert_eq!(en("7pm"), "seven p m");
        assert_eq!(en("at 7 p.m. sharp"), "at seven p m sharp");
        // Not times: seconds, or minutes out of range.
        assert_eq!(en("9:75"), "nine:seventy-five");
    }

    #[test]
    fn time_ranges() {
        assert_eq!(en("9:00–17:00"), "nine a m to five p m");
        assert_eq!(en("9:00 - 17:00"), "nine a m to five p m");
        assert_eq!(en("9:30-11:00 am"), "nine thirty a m to eleven a m");
        assert_eq!(en("11:00-1:00 pm"), "eleven a m to one p m");
        assert_eq!(zh("9:00–17:00"), "上午九点到下午五点");
    }

    #[test]
    fn number_ranges() {
        assert_eq!(en("10-20 days"), "ten to twenty days");
        assert_eq!(en("10–20"), "ten to twenty");
        assert_eq!(en("10 - 20"), "ten to twenty");
        assert_eq!(zh("3-5天"), "三到五天");
    }

    #[test]
    fn card_and_account_fragments_digit_by_digit() {
        assert_eq!(en("card ending 4821"), "card ending four eight two one");
        assert_eq!(
            en("card ending in 4821."),
            "card ending in four eight two one."
        );
        assert_eq!(en("****4821"), "ending in four eight two one");
        assert_eq!(
            en("card **** **** **** 4821"),
            "card ending in four eight two one"
        );
        assert_eq!(en("card ending ****4821"), "card ending four eight two one");
        assert_eq!(en("XXXX-XXXX-4821"), "ending in four eight two one");
        assert_eq!(
            en("account no. 12-3456"),
            "account number one two, three four five six"
        );
        assert_eq!(en("Account #: 0012"), "Account #: zero zero one two");
        assert_eq!(zh("尾号4821的卡"), "尾号四八二一的卡");
        assert_eq!(zh("****4821"), "尾号四八二一");
        assert_eq!(zh("账号：12-3456"), "账号：一二，三四五六");
        // "pending" is not "ending".
        assert_eq!(en("pending 12"), "pending twelve");
    }

    #[test]
    fn phone_numbers_grouped_with_pauses() {
        assert_eq!(
            en("+1 555 123 4567"),
            "plus one, five five five, one two three, four five six seven"
        );
        assert_eq!(
            en("(555) 123-4567"),
            "five five five, one two three, four five six seven"
        );
        assert_eq!(
            en("call 555-123-4567 now"),
            "call five five five, one two three, four five six seven now"
        );
        assert_eq!(
            en("+44 (0)20 7946 0958"),
            "plus four four, zero, two zero, seven nine four six, zero nine five eight"
        );
        assert_eq!(
            zh("+86 138 0013 8000"),
            "加八六，一三八，零零一三，八零零零"
        );
        assert_eq!(zh("请拨打13800138000"), "请拨打一三八，零零一三，八零零零");
        // Three or more hyphenated groups are an identifier, not a range.
        assert_eq!(
            en("1-800-555-0199"),
            "one, eight zero zero, five five five, zero one nine nine"
        );
    }

    #[test]
    fn ordinary_words_are_left_alone() {
        for s in [
            "Hello, world! Your balance is low.",
            "Press star to repeat; say 'agent' for help.",
            "",
            "   spaced   out   ",
            "您好，欢迎致电。",
            "e.g. no-op, A-B (see notes) #tag x*y",
        ] {
            assert_eq!(en(s), s, "en {s:?}");
            assert_eq!(zh(s), s, "zh {s:?}");
        }
    }

    #[test]
    fn long_numbers_fall_back_to_digits() {
        let forty = "1234567890123456789012345678901234567890";
        let out = en(forty);
        assert_eq!(out.split(' ').count(), 40, "{out}");
        assert!(out.starts_with("one two three four five"));
        assert_eq!(zh(forty).chars().count(), 40);
        assert_eq!(en("0123"), "zero one two three");
        assert_eq!(en("$1234567890123456789"), "one two three four five six seven eight nine zero one two three four five six seven eight nine dollars");
    }

    #[test]
    fn whole_sentences() {
        assert_eq!(
            en("Your payment of $49.95 on card ending 4821 is due 2026-12-31 by 17:00."),
            "Your payment of forty-nine dollars and ninety-five cents on card ending four eight \
             two one is due December thirty-first, twenty twenty-six by five p m."
        );
        assert_eq!(
            zh("您尾号4821的卡将于2026年12月31日17:00前扣款¥1,234.50。"),
            "您尾号四八二一的卡将于二〇二六年十二月三十一日下午五点前扣款一千二百三十四元五角。"
        );
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_text_is_handled_and_digits_are_spelled(s in any::<String>()) {
                for lang in [Lang::En, Lang::Zh] {
                    let out = normalize(&s, lang);
                    prop_assert!(!out.chars().any(|c| c.is_ascii_digit()), "{s:?} -> {out:?}");
                }
            }

            #[test]
            fn finance_like_text_is_handled(
                s in "[0-9$€¥£%:.,()+*xX -–年月日号元apmstndrhAPMUSDCNY ]{0,40}"
            ) {
                for lang in [Lang::En, Lang::Zh] {
                    let out = normalize(&s, lang);
                    prop_assert!(!out.chars().any(|c| c.is_ascii_digit()), "{s:?} -> {out:?}");
                }
            }
        }
    }
}
