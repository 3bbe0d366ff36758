"""MovieLens 100K and 1M ratings, with movie titles, genres and user demographics, as a Dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data.adapters.raw_records import file_lines, read_delimited
from data.errors import DataError
from data.schema import Dataset, make_dataset, normalise_events, normalise_items

# The genre list of ml-100k's u.genre, in flag order; used when u.genre is absent (it never changed).
ML_100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
# Labels that mean "no genre": a movie carrying only these has no category.
NO_GENRE = frozenset({"unknown", "(no genres listed)"})
ENCODING = "latin-1"  # GroupLens wrote titles in ISO-8859-1 (e.g. "Misérables")
ITEM_NOTE = (
    "items: category = the first genre (none for 'unknown'); description = genres and release; "
    "MovieLens has no brand or price"
)


def detect(path: Path) -> bool:
    if path.is_file():
        return path.name in ("u.data", "u.item", "ratings.dat", "movies.dat") and detect(path.parent)
    return path.is_dir() and (
        (path / "u.data").is_file() or ((path / "ratings.dat").is_file() and (path / "movies.dat").is_file())
    )


def load(path: Path) -> Dataset:
    directory = path if path.is_dir() else path.parent
    if (directory / "u.data").is_file():
        return _load_100k(directory)
    if (directory / "ratings.dat").is_file():
        return _load_1m(directory)
    raise DataError(
        "no MovieLens ratings here: expected u.data (100K) or ratings.dat + movies.dat (1M)", file=str(path)
    )


def _load_100k(directory: Path) -> Dataset:
    ratings_path, movies_path = directory / "u.data", _required(directory / "u.item")
    ratings = read_delimited(ratings_path, separator="\t", names=("user_id", "item_id", "value", "timestamp"))
    events = normalise_events(ratings.assign(event="rating"), file=str(ratings_path), locate=file_lines(ratings))

    notes = ["MovieLens 100K: each rating is a 'rating' event whose value is the 1-5 stars"]
    genre_path = directory / "u.genre"
    if genre_path.is_file():
        genres = _genre_names(genre_path)
    else:
        genres = list(ML_100K_GENRES)
        notes.append("u.genre is absent: the 19 standard ml-100k genre names are assumed")
    movies = read_delimited(
        movies_path,
        separator="|",
        names=("item_id", "title", "release_date", "video_release_date", "url", *genres),
        encoding=ENCODING,
    )
    flags = movies[genres]
    not_a_flag = ~flags.isin(("0", "1"))
    if not_a_flag.to_numpy().any():
        row, column = (int(axis[0]) for axis in np.nonzero(not_a_flag.to_numpy()))
        raise DataError(
            "a genre flag must be 0 or 1", file=str(movies_path), field=genres[column],
            value=flags.iat[row, column], **file_lines(movies)(row),
        )  # fmt: skip
    # bool x str is the str or "": one dot product concatenates each movie's genre names.
    genre_text = flags.eq("1").dot(pd.Series([f"{genre}|" for genre in genres], index=genres))
    items = _movie_items(movies["item_id"], movies["title"], genre_text, released=movies["release_date"])
    items = normalise_items(items, file=str(movies_path), locate=file_lines(movies))

    users = None
    users_path = directory / "u.user"
    if users_path.is_file():
        names = ("user_id", "age", "gender", "occupation", "zip")
        users = _users(read_delimited(users_path, separator="|", names=names))
        notes.append("user demographics (age, gender, occupation, zip) come from u.user")
    notes.append(ITEM_NOTE)
    return make_dataset(items, events, source=str(directory), format="movielens", notes=notes, users=users)


def _load_1m(directory: Path) -> Dataset:
    ratings_path, movies_path = directory / "ratings.dat", _required(directory / "movies.dat")
    ratings = read_delimited(
        ratings_path, separator="::", names=("user_id", "item_id", "value", "timestamp"), encoding=ENCODING
    )
    events = normalise_events(ratings.assign(event="rating"), file=str(ratings_path), locate=file_lines(ratings))
    movies = read_delimited(movies_path, separator="::", names=("item_id", "title", "genres"), encoding=ENCODING)
    # 1M has no release date; the year in the title, "Toy Story (1995)", is the closest thing.
    year = movies["title"].str.extract(r"\((\d{4})\)\s*$", expand=False)
    items = _movie_items(movies["item_id"], movies["title"], movies["genres"], released=year)
    items = normalise_items(items, file=str(movies_path), locate=file_lines(movies))

    notes = ["MovieLens 1M: each rating is a 'rating' event whose value is the 1-5 stars"]
    users = None
    users_path = directory / "users.dat"
    if users_path.is_file():
        names = ("user_id", "gender", "age", "occupation", "zip")
        users = _users(read_delimited(users_path, separator="::", names=names, encoding=ENCODING))
        notes.append("user demographics (gender, age group, occupation code, zip) come from users.dat")
    notes.append(ITEM_NOTE)
    return make_dataset(items, events, source=str(directory), format="movielens", notes=notes, users=users)


def _required(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"MovieLens needs {path.name} beside the ratings (the movie titles)", file=str(path))
    return path


def _genre_names(path: Path) -> list[str]:
    """u.genre lines are `name|flag position`; the positions order the flag columns of u.item."""
    table = read_delimited(path, separator="|", names=("genre", "position"))
    positions = pd.to_numeric(table["position"], errors="coerce")
    if positions.isna().any():
        i = int(np.flatnonzero(positions.isna().to_numpy())[0])
        raise DataError("not a genre position", file=str(path), field="position", value=table["position"].iat[i],
                        **file_lines(table)(i))
    return table.assign(position=positions).sort_values("position")["genre"].str.strip().tolist()


def _movie_items(item_ids: pd.Series, titles: pd.Series, genre_text: pd.Series, *, released: pd.Series) -> pd.DataFrame:
    """Item rows from '|'-joined genres: category = the first real genre, description = genres and release."""
    genre_lists = genre_text.str.split("|").map(lambda genres: [g for g in genres if g and g not in NO_GENRE])
    genres_sentence = ("Genres: " + genre_lists.str.join(", ") + ".").where(genre_lists.str.len() > 0, "")
    released = released.fillna("").str.strip()
    released_sentence = ("Released " + released + ".").where(released != "", "")
    description = (genres_sentence + " " + released_sentence).str.strip()
    return pd.DataFrame(
        {
            "item_id": item_ids,
            "title": titles,
            "category": genre_lists.str[0],
            "brand": None,
            "description": description.where(description != "", None),
            "price": np.nan,
        }
    )


def _users(table: pd.DataFrame) -> pd.DataFrame:
    users = table.apply(lambda column: column.str.strip())
    users["age"] = pd.to_numeric(users["age"], errors="coerce").astype("Int64")
    return users
